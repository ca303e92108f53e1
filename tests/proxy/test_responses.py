"""The OpenAI Responses API (``POST /v1/responses``) through a real instance to the stand-in LLM
server, with the real ``openai`` SDK (sync, async, streamed events): the estimate read from
``input``, ``instructions`` and ``max_output_tokens``, usage settled from the final response, the
estimate kept when a stream ends without ``response.completed`` (as for chat streams without
usage), bad bodies answered 400 naming the field, and a full queue refused as for chat."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest

from limiter.proxy.wire import ROUTES, SseRelay, body_problem, estimate_tokens, usage_from_json
from tests.fakes.llm_server import FakeLLMServer
from tests.proxy.conftest import (
    admin_update,
    async_openai_client,
    burst,
    day_tokens_used,
    in_flight,
    metric,
    model,
    openai_client,
    settled,
    start_proxy,
    stats,
)
from tests.support.fleet import Fleet, Instance
from tests.support.http import http
from tests.support.waiting import wait_until

RESPONSES = {r.path: r for r in ROUTES}["/v1/responses"]
DAY = {"tokensPerDay": 10_000_000, "maxConcurrentRequests": 8}
MODELS = ("resp-sync", "resp-async", "resp-odd", "resp-input")
PROMPT = "x" * 400  # 100 tokens by the chars/4 rule
USED = 18  # what the stand-in reports: 11 input + 7 output tokens


@pytest.fixture(scope="module")
def proxy(module_fleet: Fleet, module_llm: FakeLLMServer) -> Iterator[Instance]:
    url = module_llm.url
    models = [
        *(model(name, url, limits=DAY) for name in MODELS),
        model("resp-ollama", url, "ollama", limits=DAY),
        model("resp-one", url, limits={"maxConcurrentRequests": 1}),
    ]
    yield start_proxy(module_fleet, "proxy-responses", models)


@pytest.fixture(autouse=True)
def calm(module_llm: FakeLLMServer) -> Iterator[None]:
    """Every test starts and ends with well-behaved upstreams."""
    module_llm.behaviours.clear()
    yield
    module_llm.behaviours.clear()


def estimated(inst: Instance, name: str) -> float:
    """Tokens the proxy reserved for the model's requests so far."""
    return metric(inst, "fleet_limiter_proxy_tokens_total", f'kind="estimated",model="{name}"')


def outcome(inst: Instance, name: str, what: str) -> float:
    return metric(inst, "fleet_limiter_proxy_requests_total", f'model="{name}",outcome="{what}"')


# -- the wire format, pure ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fallback", "expected"),
    [
        ({"input": PROMPT, "instructions": "y" * 40, "max_output_tokens": 50}, 999, 160),
        ({"input": PROMPT}, 500, 500),  # no output limit: the job type's estimate
        ({"input": "x" * 4000}, 500, 1000),  # unless the input alone is larger
        ({"input": PROMPT, "max_output_tokens": 0}, 300, 300),
        (
            {
                "input": [
                    {"role": "developer", "content": "z" * 40},
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": PROMPT},
                            {"type": "input_image", "image_url": "data:image/png;base64," + "A" * 400},
                        ],
                    },
                    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "a" * 40},
                    {"type": "function_call_output", "call_id": "c1", "output": "w" * 80},
                ],
                "max_output_tokens": 30,
            },
            0,
            170,  # (40 + 400 + 40 + 80) / 4 + 30; images count nothing, as in chat
        ),
    ],
)
def test_estimate_reads_input_instructions_and_max_output_tokens(
    body: dict[str, Any], fallback: int, expected: int
) -> None:
    assert body_problem(RESPONSES, body) is None
    assert estimate_tokens(RESPONSES, body, fallback) == expected


def test_usage_from_the_json_and_from_the_final_event() -> None:
    usage = {"input_tokens": 5, "output_tokens": 4, "total_tokens": 9}
    assert usage_from_json(RESPONSES, json.dumps({"object": "response", "usage": usage}).encode()) == 9
    partial = {"input_tokens": 5, "output_tokens": 4}
    assert usage_from_json(RESPONSES, json.dumps({"usage": partial}).encode()) == 9
    assert usage_from_json(RESPONSES, json.dumps({"usage": None}).encode()) is None

    def event(i: int, kind: str, **fields: Any) -> bytes:
        return (
            f"event: {kind}\ndata: ".encode()
            + json.dumps({"type": kind, "sequence_number": i, **fields}).encode()
            + b"\n\n"
        )

    created = event(0, "response.created", response={"id": "r", "usage": None})
    # A delta whose text names the final event is not taken for it.
    delta = event(1, "response.output_text.delta", delta='"response.completed" "usage"')
    stream = created + delta + event(2, "response.completed", response={"id": "r", "usage": usage})
    for split in (1, 9, 10_000):
        relay = SseRelay(strip_usage=False, responses=True)
        out = b"".join(relay.feed(stream[i : i + split]) for i in range(0, len(stream), split))
        assert out + relay.finish() == stream and relay.tokens == 9 and relay.done
    relay = SseRelay(strip_usage=False, responses=True)
    relay.feed(created + delta)
    assert relay.tokens is None and not relay.done  # no final event: the estimate stands
    error = relay.error_event("broke")
    assert error.startswith(b"event: error\ndata: ")
    doc = json.loads(error.split(b"data: ", 1)[1])
    assert doc["type"] == "error" and doc["sequence_number"] == 2 and doc["error"]["code"] == 502


# -- the real SDK through a real instance ----------------------------------------------------------


def test_sync_create_settles_the_usage_it_reports(proxy: Instance, module_llm: FakeLLMServer) -> None:
    before, reserved = day_tokens_used(proxy, "resp-sync"), estimated(proxy, "resp-sync")
    with openai_client(proxy) as c:
        answer = c.responses.create(
            model="resp-sync", input=PROMPT, instructions="y" * 40, max_output_tokens=50
        )
    assert answer.output_text == "tok0 tok1 tok2" and answer.status == "completed"
    assert answer.usage is not None and answer.usage.total_tokens == USED
    settled(proxy, "resp-sync")  # the lease is back: inFlight 0
    # 160 reserved (100 input + 10 instructions + 50 max_output_tokens), 18 used: 142 refunded.
    assert estimated(proxy, "resp-sync") - reserved == 160
    assert day_tokens_used(proxy, "resp-sync") - before == USED
    seen = module_llm.received("resp-sync")[-1]
    assert seen.path == "/v1/responses" and "Authorization" not in seen.headers
    assert seen.body == {
        "model": "resp-sync",
        "input": PROMPT,
        "instructions": "y" * 40,
        "max_output_tokens": 50,
    }


def test_sync_stream_passes_every_event_and_settles_from_completed(
    proxy: Instance, module_llm: FakeLLMServer
) -> None:
    before = day_tokens_used(proxy, "resp-sync")
    with openai_client(proxy) as c:
        events = list(c.responses.create(model="resp-sync", input=PROMPT, max_output_tokens=20, stream=True))
        with c.responses.stream(model="resp-sync", input="hi") as helper:
            for _ in helper:
                pass
            final = helper.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] == "response.completed" and kinds.count("response.output_text.delta") == 3
    assert [e.sequence_number for e in events] == list(range(len(events)))  # nothing dropped
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "tok0 tok1 tok2 "
    completed = events[-1]
    assert completed.type == "response.completed" and completed.response.usage is not None
    assert completed.response.usage.total_tokens == USED
    assert final.output_text == "tok0 tok1 tok2 " and final.usage is not None
    # A Responses stream reports its usage unasked: the body goes upstream as it came.
    assert all("stream_options" not in r.body for r in module_llm.received("resp-sync"))
    settled(proxy, "resp-sync")
    assert day_tokens_used(proxy, "resp-sync") - before == 2 * USED


async def test_async_list_input_and_stream(proxy: Instance) -> None:
    before, reserved = day_tokens_used(proxy, "resp-async"), estimated(proxy, "resp-async")
    items: Any = [
        {"role": "developer", "content": "z" * 40},
        {"role": "user", "content": [{"type": "input_text", "text": PROMPT}]},
    ]
    async with async_openai_client(proxy) as c:
        answer = await c.responses.create(model="resp-async", input=items, max_output_tokens=30)
        assert answer.output_text == "tok0 tok1 tok2" and answer.usage is not None
        parts = []
        stream = await c.responses.create(model="resp-async", input=items, max_output_tokens=30, stream=True)
        async for event in stream:
            if event.type == "response.output_text.delta":
                parts.append(event.delta)
            last = event
        assert "".join(parts) == "tok0 tok1 tok2 " and last.type == "response.completed"
    settled(proxy, "resp-async")
    assert estimated(proxy, "resp-async") - reserved == 2 * (110 + 30)
    assert day_tokens_used(proxy, "resp-async") - before == 2 * USED


def test_an_ollama_upstream_is_forwarded_too(proxy: Instance, module_llm: FakeLLMServer) -> None:
    """Ollama serves the OpenAI APIs as well: /v1/responses goes to any upstream, like chat."""
    with openai_client(proxy) as c:
        answer = c.responses.create(model="resp-ollama", input="hi")
    assert answer.output_text == "tok0 tok1 tok2"
    assert module_llm.received("resp-ollama")[-1].path == "/v1/responses"
    settled(proxy, "resp-ollama")


def test_without_a_final_usage_the_estimate_stands_as_for_chat(
    proxy: Instance, module_llm: FakeLLMServer
) -> None:
    """A stream that ends without response.completed (or an answer without usage) keeps the
    reservation, exactly as a chat stream without its usage event does."""
    name = "resp-odd"
    module_llm.behave(name, responses_final=False, report_usage=False)
    with openai_client(proxy) as c:
        before = day_tokens_used(proxy, name)
        events = list(c.responses.create(model=name, input=PROMPT, max_output_tokens=50, stream=True))
        assert events[-1].type == "response.output_item.done"  # the stream ended without it
        settled(proxy, name)
        assert day_tokens_used(proxy, name) - before == 150
        before = day_tokens_used(proxy, name)
        answer = c.responses.create(model=name, input=PROMPT, max_output_tokens=50)
        assert answer.usage is None
        settled(proxy, name)
        assert day_tokens_used(proxy, name) - before == 150
        before = day_tokens_used(proxy, name)
        chunks = list(
            c.chat.completions.create(
                model=name, messages=[{"role": "user", "content": PROMPT}], max_tokens=50, stream=True
            )
        )
        assert chunks  # a chat stream without its usage event: the same rule
        settled(proxy, name)
        assert day_tokens_used(proxy, name) - before == 150


async def test_stream_broken_mid_way_ends_with_an_error_event(
    proxy: Instance, module_llm: FakeLLMServer
) -> None:
    name = "resp-odd"
    module_llm.behave(name, drop="mid-stream", chunks=5, chunk_delay=0.05)
    before = day_tokens_used(proxy, name)
    with openai_client(proxy) as c:
        stream = c.responses.create(model=name, input=PROMPT, max_output_tokens=50, stream=True)
        with pytest.raises(openai.APIError) as err:
            for _ in stream:
                pass
    assert "broke the stream" in str(err.value)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            proxy.url + "/v1/responses", json={"model": name, "input": "hi", "stream": True}
        ) as resp,
    ):
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        text = (await resp.read()).decode()
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert blocks[0].startswith("event: response.created\n")
    assert blocks[-1].startswith("event: error\ndata: ")
    error = json.loads(blocks[-1].split("data: ", 1)[1])
    assert (
        error["type"] == "error" and error["sequence_number"] == 1 and "broke the stream" in error["message"]
    )
    settled(proxy, name)
    # Tokens may have been generated: the first request's reservation (150) stands, as for chat.
    assert day_tokens_used(proxy, name) - before == 150 + 500
    assert outcome(proxy, name, "upstream_error") >= 2


async def test_client_gone_mid_stream_releases_the_lease(proxy: Instance, module_llm: FakeLLMServer) -> None:
    name = "resp-odd"
    module_llm.behave(name, chunks=50, chunk_delay=0.1)
    async with aiohttp.ClientSession() as session:
        body = {"model": name, "input": "hi", "stream": True}
        async with session.post(proxy.url + "/v1/responses", json=body) as resp:
            assert resp.status == 200
            await resp.content.readline()
            assert in_flight(proxy) == 1
            resp.close()
    await asyncio.to_thread(wait_until, lambda: in_flight(proxy) == 0, 5)
    settled(proxy, name)
    assert outcome(proxy, name, "client_gone") >= 1


def test_upstream_error_uses_no_tokens(proxy: Instance, module_llm: FakeLLMServer) -> None:
    module_llm.behave("resp-odd", status=500)
    before = day_tokens_used(proxy, "resp-odd")
    with openai_client(proxy) as c, pytest.raises(openai.InternalServerError) as err:
        c.responses.create(model="resp-odd", input=PROMPT)
    assert err.value.status_code == 502 and "answered 500" in str(err.value)
    settled(proxy, "resp-odd")
    assert day_tokens_used(proxy, "resp-odd") == before


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"input": 5}, "input: 5 is not valid: expected a string or a list of input items"),
        ({"input": {"role": "user", "content": "hi"}}, "input: dict is not valid"),
        ({"input": ["hi"]}, 'input[0]: "hi" is not valid: expected an input item'),
        (
            {"input": [{"role": "user", "content": "a"}, {"role": "user", "content": 7}]},
            "input[1].content: 7",
        ),
        ({"input": "hi", "instructions": ["be brief"]}, "instructions: list is not valid: expected a string"),
        ({"input": "hi", "max_output_tokens": -1}, "max_output_tokens: -1 is not valid"),
        ({"input": "hi", "max_output_tokens": "9"}, 'max_output_tokens: "9" is not valid'),
        ({"input": "hi", "max_output_tokens": 1e308}, "max_output_tokens: 1e+308"),
        ({"input": "hi", "max_output_tokens": True}, "max_output_tokens: true"),
        ({"input": "hi", "max_output_tokens": 10**10}, "expected an integer from 0 to 1000000000"),
        (b'{"model": "resp-input", "max_output_tokens": NaN}', "max_output_tokens: NaN"),
        (
            b'{"model": "resp-input", "input": [{"content": ' + b"[" * 3000 + b"]" * 3000 + b"}]}",
            "nested",
        ),
        (b'{"input": "hi"}', "model: required field is missing"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    proxy: Instance, module_llm: FakeLLMServer, body: Any, says: str
) -> None:
    sent = body if isinstance(body, bytes) else json.dumps({"model": "resp-input", **body}).encode()
    status, doc, _ = http("POST", proxy.url + "/v1/responses", sent)
    assert status == 400 and says in doc["error"]["message"], doc
    assert doc["error"]["type"] == "invalid_request_error" and doc["status"] == 400
    assert not module_llm.received("resp-input")  # refused before any lease or forwarding
    assert in_flight(proxy) == 0


def test_the_sdk_sees_a_bad_request_error(proxy: Instance) -> None:
    with openai_client(proxy) as c, pytest.raises(openai.BadRequestError) as err:
        c.responses.create(model="resp-input", input=5)  # type: ignore[arg-type]
    assert "input: 5 is not valid" in str(err.value)


def test_other_responses_endpoints_are_not_proxied(proxy: Instance) -> None:
    for method, path in (
        ("GET", "/v1/responses/resp_fake1"),
        ("DELETE", "/v1/responses/resp_fake1"),
        ("POST", "/v1/responses/resp_fake1/cancel"),
        ("GET", "/v1/responses/resp_fake1/input_items"),
    ):
        status, doc, _ = http(method, proxy.url + path)
        assert status == 404 and doc["error"] == f"no route {method} {path}", doc
    with openai_client(proxy) as c, pytest.raises(openai.NotFoundError):
        c.responses.retrieve("resp_fake1")


@pytest.mark.timeout(90)
async def test_a_full_queue_refuses_as_for_chat(proxy: Instance, module_llm: FakeLLMServer) -> None:
    """parallel_limit 1 and queue_limit 2: 3 of a burst of 10 are served and 7 refused at once,
    on /v1/responses (with the SDK) as on /v1/chat/completions."""
    name = "resp-one"
    status, doc, _ = admin_update(proxy, {"model": name, "queue_limit": 2})
    assert status == 200 and (doc["parallel_limit"], doc["queue_limit"]) == (1, 2), doc
    module_llm.behave(name, latency=1.0)
    chat = await burst(
        proxy.url + "/v1/chat/completions",
        {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        10,
    )
    settled(proxy, name)
    assert sorted(a.status for a in chat) == [200] * 3 + [503] * 7
    chat_refusal = next(a for a in chat if a.status == 503)

    async with async_openai_client(proxy) as c:

        async def one() -> Any:
            try:
                return await c.responses.create(model=name, input="hi", max_output_tokens=8)
            except openai.APIStatusError as exc:
                return exc

        answers = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(10))), 30)
    settled(proxy, name)
    refused = [a for a in answers if isinstance(a, openai.APIStatusError)]
    assert len(refused) == 7 and all(a.status_code == 503 for a in refused)
    assert sum(1 for a in answers if isinstance(a, openai.types.responses.Response)) == 3
    for err in refused:
        assert int(err.response.headers["Retry-After"]) >= 1
        body = err.response.json()
        # The same refusal as chat's: OpenAI's error shape, the bound in the message, the model.
        assert set(body) == set(chat_refusal.json()) and body["model"] == name
        assert body["error"]["type"] == chat_refusal.json()["error"]["type"] == "overloaded_error"
        assert body["reason"] == chat_refusal.json()["reason"] == "queue_full"
        assert body["limit"] == chat_refusal.json()["limit"] and body["limit"]["value"] == 2
        assert body["error"]["message"].startswith(f"the queue of model '{name}' is full")
    assert module_llm.peak[name] == 1
    doc = stats(proxy, name)
    assert (doc["total_processed"], doc["total_rejected"]) == (6, 14)
