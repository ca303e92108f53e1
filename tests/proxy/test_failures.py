"""Upstream failures and clients that go away: clear JSON errors, and every lease comes back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.proxy.conftest import ENV, in_flight, model, settled, spec, stats
from tests.support.fleet import Fleet, Instance
from tests.support.http import http
from tests.support.redis_server import free_port
from tests.support.waiting import wait_until

LIMITS = {"tokensPerDay": 10_000_000, "maxConcurrentRequests": 8}
CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


@pytest.fixture(scope="module")
def proxy(module_fleet: Fleet, module_llm: FakeLLMServer) -> Iterator[Instance]:
    url = module_llm.url
    module_fleet.write_policy(
        "proxy-failures",
        spec(
            [
                model("refused", f"http://127.0.0.1:{free_port()}"),
                model("flaky", url, limits=LIMITS),
                model("flaky-ollama", url, "ollama", limits=LIMITS),
                model("slow", url, timeoutSeconds=0.5),
                model("one", url, limits={"maxConcurrentRequests": 1}),
            ]
        ),
    )
    (inst,) = module_fleet.start(1, env=ENV)
    yield inst


@pytest.fixture(autouse=True)
def calm(module_llm: FakeLLMServer) -> Iterator[None]:
    """Every test starts and ends with well-behaved upstreams."""
    module_llm.behaviours.clear()
    yield
    module_llm.behaviours.clear()


def tokens_used(inst: Instance, name: str) -> int:
    return int(inst.allocation()["budgets"][name]["tokensPerDay"]["used"])


def outcome(inst: Instance, name: str, what: str) -> float:
    """The proxy's request counter for one model and outcome, from /metrics."""
    status, text, _ = http("GET", inst.url + "/metrics")
    assert status == 200
    prefix = f'fleet_limiter_proxy_requests_total{{model="{name}",outcome="{what}"}} '
    return next(
        (float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix)), 0.0
    )


def chat(inst: Instance, name: str, body: dict[str, Any] | None = None) -> tuple[int, Any, dict[str, str]]:
    return http("POST", inst.url + "/v1/chat/completions", {"model": name, **(body or CHAT)}, timeout=15)


def test_connection_refused_is_502(proxy: Instance) -> None:
    status, doc, _ = chat(proxy, "refused")
    assert status == 502 and "cannot connect to upstream http://127.0.0.1:" in doc["error"]["message"], doc
    settled(proxy, "refused")
    assert outcome(proxy, "refused", "unreachable") == 1


@pytest.mark.parametrize("code", [500, 503])
def test_upstream_5xx_is_502_and_uses_no_tokens(
    proxy: Instance, module_llm: FakeLLMServer, code: int
) -> None:
    module_llm.behave("flaky", status=code)
    before = tokens_used(proxy, "flaky")
    status, doc, _ = chat(proxy, "flaky")
    assert status == 502 and f"answered {code}" in doc["error"]["message"], doc
    assert doc["error"]["type"] == "upstream_error"
    settled(proxy, "flaky")
    assert tokens_used(proxy, "flaky") == before  # the whole reservation was refunded


def test_slow_upstream_is_504_within_its_timeout(proxy: Instance, module_llm: FakeLLMServer) -> None:
    module_llm.behave("slow", latency=3)
    start = time.monotonic()
    status, doc, _ = chat(proxy, "slow")
    assert status == 504 and "timeoutSeconds" in doc["error"]["message"], doc
    assert time.monotonic() - start < 2.5
    settled(proxy, "slow")


def test_upstream_429_passes_with_its_retry_after_and_is_counted(
    proxy: Instance, module_llm: FakeLLMServer
) -> None:
    module_llm.behave("flaky", status=429, retry_after="7")
    before = outcome(proxy, "flaky", "upstream_429")
    with (
        openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0, timeout=15) as client,
        pytest.raises(openai.RateLimitError) as err,
    ):
        client.chat.completions.create(model="flaky", messages=CHAT["messages"])
    assert err.value.response.headers["Retry-After"] == "7"
    assert outcome(proxy, "flaky", "upstream_429") == before + 1
    settled(proxy, "flaky")


def test_connection_dropped_before_the_answer_is_502(proxy: Instance, module_llm: FakeLLMServer) -> None:
    module_llm.behave("flaky", drop="before")
    status, doc, _ = chat(proxy, "flaky")
    assert status == 502 and "closed the connection" in doc["error"]["message"], doc
    settled(proxy, "flaky")


def test_stream_broken_mid_way_ends_with_an_error_event(proxy: Instance, module_llm: FakeLLMServer) -> None:
    module_llm.behave("flaky", drop="mid-stream", chunks=5, chunk_delay=0.05)
    module_llm.behave("flaky-ollama", drop="mid-stream", chunks=5, chunk_delay=0.05)
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0, timeout=15) as client:
        stream = client.chat.completions.create(model="flaky", messages=CHAT["messages"], stream=True)
        with pytest.raises(openai.APIError) as err:
            for _ in stream:
                pass
    assert "broke the stream" in str(err.value)
    status, text, _ = http("POST", proxy.url + "/api/chat", {"model": "flaky-ollama", **CHAT})
    lines = [json.loads(line) for line in text.splitlines()]
    assert (
        status == 200
        and lines[0]["message"]["content"] == "tok0 "
        and "broke the stream" in lines[-1]["error"]
    )
    settled(proxy, "flaky")
    settled(proxy, "flaky-ollama")


async def test_queued_client_that_disconnects_leaves_the_queue(
    proxy: Instance, module_llm: FakeLLMServer
) -> None:
    module_llm.behave("one", latency=2)
    async with aiohttp.ClientSession() as session:
        holder = asyncio.create_task(
            session.post(proxy.url + "/v1/chat/completions", json={"model": "one", **CHAT})
        )
        await asyncio.to_thread(wait_until, lambda: stats(proxy, "one")["active_requests"] == 1, 5)
        quitter = asyncio.create_task(
            session.post(proxy.url + "/v1/chat/completions", json={"model": "one", **CHAT})
        )
        await asyncio.to_thread(wait_until, lambda: stats(proxy, "one")["queued_requests"] == 1, 5)
        quitter.cancel()  # the client goes away while queued
        with pytest.raises(asyncio.CancelledError):
            await quitter
        await asyncio.to_thread(wait_until, lambda: stats(proxy, "one")["queued_requests"] == 0, 1)
        assert stats(proxy, "one")["active_requests"] == 1  # the holder is still running
        async with await holder as resp:
            assert resp.status == 200
    settled(proxy, "one")
    assert len(module_llm.received("one")) == 1  # the quitter never reached the upstream


async def test_client_that_disconnects_mid_stream_releases_its_lease(
    proxy: Instance, module_llm: FakeLLMServer
) -> None:
    module_llm.behave("flaky", chunks=50, chunk_delay=0.1)
    async with aiohttp.ClientSession() as session:
        body = {"model": "flaky", "stream": True, **CHAT}
        async with session.post(proxy.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            await resp.content.readline()
            assert in_flight(proxy) == 1
            resp.close()  # drop the connection mid-stream
    start = time.monotonic()
    await asyncio.to_thread(wait_until, lambda: in_flight(proxy) == 0, 2)
    assert time.monotonic() - start < 2
    settled(proxy, "flaky")
    # The upstream call was cut too, long before its 5 s stream would have ended.
    await asyncio.to_thread(wait_until, lambda: module_llm.in_flight["flaky"] == 0, 2)
    assert outcome(proxy, "flaky", "client_gone") >= 1
