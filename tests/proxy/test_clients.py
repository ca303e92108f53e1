"""Real clients through a real instance to the stand-in LLM server: the official OpenAI SDK (sync,
async, streaming) and plain HTTP for Ollama; usage settles against the estimate; upstream keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.proxy.conftest import day_tokens_used, model, openai_client, settled, start_proxy
from tests.support.fleet import Fleet, Instance
from tests.support.http import http

DAY = {"tokensPerDay": 10_000_000, "maxConcurrentRequests": 8}
UPSTREAM_KEY = "sk-upstream-secret-value"
SECRET_KEY = "sk-mounted-from-a-secret"


@pytest.fixture(scope="module")
def proxy(module_fleet: Fleet, module_llm: FakeLLMServer) -> Iterator[Instance]:
    url = module_llm.url
    models = [
        model("chat-sync", url, limits=DAY),
        model("chat-async", url, limits=DAY),
        model("ollama-a", url, "ollama", limits=DAY),
        model("keyed", url, apiKeyEnv="PROXY_TEST_UPSTREAM_KEY"),
        model("secret-keyed", url, apiKeySecretRef={"name": "llm", "key": "token"}),
        model("key-missing", url, apiKeyEnv="PROXY_TEST_UNSET_VARIABLE"),
    ]
    env = {"PROXY_TEST_UPSTREAM_KEY": UPSTREAM_KEY, "FLEET_LIMITER_UPSTREAM_KEY_SECRET_KEYED": SECRET_KEY}
    inst = start_proxy(module_fleet, "proxy-clients", models, env=env)
    yield inst
    assert UPSTREAM_KEY not in inst.log() and SECRET_KEY not in inst.log()


MESSAGES: list[Any] = [{"role": "user", "content": "x" * 400}]  # 100 tokens by the chars/4 rule


def test_openai_sync_chat_settles_actual_usage(proxy: Instance, module_llm: FakeLLMServer) -> None:
    before = day_tokens_used(proxy, "chat-sync")
    with openai_client(proxy) as client:
        answer = client.chat.completions.create(model="chat-sync", messages=MESSAGES, max_tokens=50)
    assert answer.choices[0].message.content == "tok0 tok1 tok2"
    assert answer.usage is not None and answer.usage.total_tokens == 18
    settled(proxy, "chat-sync")
    # 150 reserved (100 prompt + 50 max_tokens), 18 used: the lease refunded 132.
    assert day_tokens_used(proxy, "chat-sync") - before == 18
    seen = module_llm.received("chat-sync")[-1]
    assert "Authorization" not in seen.headers  # the client's key is the proxy's business only
    assert seen.body["max_tokens"] == 50


def test_openai_sync_stream_gets_usage_without_showing_it(proxy: Instance, module_llm: FakeLLMServer) -> None:
    before = day_tokens_used(proxy, "chat-sync")
    with openai_client(proxy) as client:
        chunks = list(client.chat.completions.create(model="chat-sync", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 tok2 "
    assert all(c.choices for c in chunks)  # the usage-only event was dropped: the client did not ask
    assert module_llm.received("chat-sync")[-1].body["stream_options"] == {"include_usage": True}
    settled(proxy, "chat-sync")
    assert day_tokens_used(proxy, "chat-sync") - before == 18


def test_openai_sync_stream_with_usage_asked_for(proxy: Instance) -> None:
    with openai_client(proxy) as client:
        stream = client.completions.create(
            model="chat-sync",
            prompt="hello",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 18 and not chunks[-1].choices
    assert "".join(c.choices[0].text for c in chunks[:-1]) == "tok0 tok1 tok2 "


async def test_openai_async_chat_completions_embeddings_and_stream(proxy: Instance) -> None:
    before = day_tokens_used(proxy, "chat-async")
    async with openai.AsyncOpenAI(
        base_url=proxy.url + "/v1", api_key="client-key", max_retries=0, timeout=30
    ) as client:
        chat = await client.chat.completions.create(model="chat-async", messages=MESSAGES, max_tokens=20)
        assert chat.usage is not None and chat.usage.total_tokens == 18
        text = await client.completions.create(model="chat-async", prompt="say", max_tokens=3)
        assert text.choices[0].text == "tok0 tok1 tok2"
        embedding = await client.embeddings.create(model="chat-async", input=["one", "two"])
        assert len(embedding.data) == 2 and embedding.usage.total_tokens == 11
        parts = []
        stream = await client.chat.completions.create(model="chat-async", messages=MESSAGES, stream=True)
        async for chunk in stream:
            parts.append(chunk.choices[0].delta.content or "")
        assert "".join(parts) == "tok0 tok1 tok2 "
    settled(proxy, "chat-async")
    assert day_tokens_used(proxy, "chat-async") - before == 18 * 3 + 11


def test_ollama_generate_streams_ndjson_and_settles(proxy: Instance) -> None:
    before = day_tokens_used(proxy, "ollama-a")
    status, text, headers = http(
        "POST",
        proxy.url + "/api/generate",
        {"model": "ollama-a", "prompt": "x" * 40, "options": {"num_predict": 9}},
    )
    assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in text.splitlines()]
    assert "".join(x["response"] for x in lines) == "tok0 tok1 tok2 "
    assert lines[-1]["done"] is True and lines[-1]["prompt_eval_count"] + lines[-1]["eval_count"] == 18
    status, doc, _ = http(
        "POST",
        proxy.url + "/api/chat",
        {"model": "ollama-a", "messages": [{"role": "user", "content": "hi"}], "stream": False},
    )
    assert status == 200 and doc["message"]["content"] == "tok0 tok1 tok2" and doc["eval_count"] == 7
    settled(proxy, "ollama-a")
    assert day_tokens_used(proxy, "ollama-a") - before == 36


async def test_ollama_stream_arrives_chunk_by_chunk(proxy: Instance, module_llm: FakeLLMServer) -> None:
    module_llm.behave("ollama-a", chunks=4, chunk_delay=0.3)
    try:
        arrivals = []
        async with aiohttp.ClientSession() as session:
            body = {"model": "ollama-a", "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(proxy.url + "/api/chat", json=body) as resp:
                assert resp.status == 200
                async for line in resp.content:
                    arrivals.append((json.loads(line), __import__("time").monotonic()))
        assert len(arrivals) == 5 and arrivals[-1][0]["done"] is True
        # Passed through as produced: the first line came well before the last.
        assert arrivals[-1][1] - arrivals[0][1] > 0.6
    finally:
        module_llm.behave("ollama-a")


def test_upstream_keys_come_from_the_environment(proxy: Instance, module_llm: FakeLLMServer) -> None:
    with openai_client(proxy) as client:
        client.chat.completions.create(model="keyed", messages=MESSAGES)
        client.chat.completions.create(model="secret-keyed", messages=MESSAGES)
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model="key-missing", messages=MESSAGES)
    assert module_llm.received("keyed")[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert module_llm.received("secret-keyed")[-1].headers["Authorization"] == f"Bearer {SECRET_KEY}"
    assert err.value.status_code == 502 and "PROXY_TEST_UNSET_VARIABLE" in str(err.value)
    assert not module_llm.received("key-missing")
