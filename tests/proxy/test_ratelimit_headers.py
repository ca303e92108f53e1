"""Rate-limit headers and self-explaining refusals through the proxy, seen by the real OpenAI SDK
(raw responses, streaming, its own retry honouring Retry-After) and by plain HTTP; the upstream is
the stand-in LLM server."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.proxy.conftest import ENV, metric, model, post, settled, spec, stats
from tests.support.fleet import Fleet, Instance
from tests.support.waiting import wait_until

MINUTE = {"tokensPerMinute": 1_000_000, "requestsPerMinute": 1000, "maxConcurrentRequests": 8}
JOBS = [{"name": "chat", "ratio": 1.0, "estimate": {"tokens": 500}, "queue": {"maxWaiting": 1}}]
MESSAGES: list[Any] = [{"role": "user", "content": "x" * 400}]  # 100 tokens by the chars/4 rule
RATE_HEADERS = ("x-ratelimit-", "ratelimit")
DURATION = re.compile(r"^(?:\d+m)?\d+(?:\.\d+)?(?:ms|s)$")


@pytest.fixture(scope="module")
def proxy(module_fleet: Fleet, module_llm: FakeLLMServer) -> Iterator[Instance]:
    url = module_llm.url
    module_fleet.write_policy(
        "proxy-ratelimit",
        spec(
            [
                model("rl-minute", url, limits=MINUTE),
                model("rl-tokens", url, limits={"tokensPerMinute": 1_000_000, "maxConcurrentRequests": 8}),
                model("rl-day", url, limits={"tokensPerDay": 10_000_000, "maxConcurrentRequests": 8}),
                model("rl-busy", url, limits={"maxConcurrentRequests": 1}),
            ],
            JOBS,
        ),
    )
    (inst,) = module_fleet.start(1, env=ENV)
    yield inst


def client(inst: Instance, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=inst.url + "/v1", api_key="client-key", max_retries=retries, timeout=30)


def rate_headers(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith(RATE_HEADERS)}


def test_openai_raw_response_shows_both_header_families(proxy: Instance) -> None:
    with client(proxy) as c:
        raw = c.chat.completions.with_raw_response.create(model="rl-minute", messages=MESSAGES, max_tokens=10)
        assert raw.parse().choices[0].message.content == "tok0 tok1 tok2"
    h = rate_headers(raw.headers)
    assert h["x-ratelimit-limit-requests"] == "1000" and h["x-ratelimit-limit-tokens"] == "1000000"
    # This instance's view of the fleet's minute, after this request's reservation (110 tokens).
    assert int(h["x-ratelimit-remaining-requests"]) <= 999
    assert int(h["x-ratelimit-remaining-tokens"]) <= 1_000_000 - 110
    assert DURATION.match(h["x-ratelimit-reset-requests"]) and DURATION.match(h["x-ratelimit-reset-tokens"])
    assert h["ratelimit-policy"] == '"rpm";q=1000;w=60, "tpm";q=1000000;w=60;qu="tokens"'
    assert re.fullmatch(r'"rpm";r=\d+;t=\d+, "tpm";r=\d+;t=\d+', h["ratelimit"])
    settled(proxy, "rl-minute")


def test_streamed_answers_carry_the_headers_before_the_body(proxy: Instance) -> None:
    with client(proxy) as c:
        raw = c.chat.completions.with_raw_response.create(model="rl-minute", messages=MESSAGES, stream=True)
        h = rate_headers(raw.headers)
        chunks = list(raw.parse())
    assert "".join(x.choices[0].delta.content or "" for x in chunks) == "tok0 tok1 tok2 "
    assert h["x-ratelimit-limit-tokens"] == "1000000" and "ratelimit" in h
    settled(proxy, "rl-minute")


def test_a_dimension_without_a_minute_limit_has_no_headers(proxy: Instance) -> None:
    with client(proxy) as c:
        tokens_only = c.chat.completions.with_raw_response.create(model="rl-tokens", messages=MESSAGES)
        day_only = c.chat.completions.with_raw_response.create(model="rl-day", messages=MESSAGES)
    h = rate_headers(tokens_only.headers)
    assert set(h) == {
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "ratelimit-policy",
        "ratelimit",
    }
    assert h["ratelimit-policy"] == '"tpm";q=1000000;w=60;qu="tokens"'
    assert rate_headers(day_only.headers) == {}
    settled(proxy, "rl-tokens")
    settled(proxy, "rl-day")


async def test_openai_sdk_retry_waits_the_retry_after_of_a_full_queue(
    proxy: Instance, module_llm: FakeLLMServer
) -> None:
    url = proxy.url + "/v1/chat/completions"
    body = {"model": "rl-busy", "messages": MESSAGES}
    module_llm.behave("rl-busy", latency=1.5)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        assert (await post(session, url, body)).status == 200  # the mean processing time: 1.5 s
        running = asyncio.ensure_future(post(session, url, body))
        await asyncio.to_thread(wait_until, lambda: stats(proxy, "rl-busy")["active_requests"] == 1, 10)
        queued = asyncio.ensure_future(post(session, url, body))
        await asyncio.to_thread(wait_until, lambda: stats(proxy, "rl-busy")["queued_requests"] == 1, 10)
        full = 'model="rl-busy",reason="queue_full"'
        counted = await asyncio.to_thread(metric, proxy, "fleet_limiter_proxy_refusals_total", full)
        probe = await post(session, url, body)
        assert probe.status == 503, probe.body
        # Counted under the reason its body names.
        assert (
            await asyncio.to_thread(metric, proxy, "fleet_limiter_proxy_refusals_total", full) == counted + 1
        )
        doc = probe.json()
        assert doc["error"]["type"] == "overloaded_error" and doc["model"] == "rl-busy"  # OpenAI shape kept
        assert doc["reason"] == "queue_full" and doc["position"] == 2
        assert doc["limit"] == {"name": "queue_limit", "model": "rl-busy", "value": 1}
        wait = int(probe.headers["retry-after-ms"]) / 1000
        assert doc["retryAfterSeconds"] == int(probe.headers["Retry-After"]) >= wait >= 1
        rejected = stats(proxy, "rl-busy")["total_rejected"]
        started = time.monotonic()
        async with openai.AsyncOpenAI(
            base_url=proxy.url + "/v1", api_key="client-key", max_retries=1, timeout=30
        ) as sdk:
            answer = await sdk.chat.completions.create(model="rl-busy", messages=MESSAGES)
        waited = time.monotonic() - started
        assert answer.choices[0].message.content == "tok0 tok1 tok2"
        # Refused once (the queue was still full), then retried after Retry-After, not at once.
        assert stats(proxy, "rl-busy")["total_rejected"] == rejected + 1
        assert wait * 0.9 <= waited < wait + 30
        assert (await running).status == 200 and (await queued).status == 200
    module_llm.behave("rl-busy", latency=0.0)
    settled(proxy, "rl-busy")
