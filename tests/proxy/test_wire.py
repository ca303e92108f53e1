"""The proxy's wire formats, pure: estimates from request bodies, usage from answers and streams,
the stream_options rewrite, upstream URLs and key variables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from limiter.core.policy import parse_policy, upstream_key_env
from limiter.proxy.upstream import UpstreamKeyMissing, api_key, shown_url, target_url
from limiter.proxy.wire import (
    ROUTES,
    NdjsonRelay,
    SseRelay,
    estimate_tokens,
    usage_from_json,
    wants_stream,
    with_stream_usage,
)

R = {r.path: r for r in ROUTES}
CHAT, COMPLETIONS, EMBEDDINGS = R["/v1/chat/completions"], R["/v1/completions"], R["/v1/embeddings"]
GENERATE, OLLAMA_CHAT = R["/api/generate"], R["/api/chat"]


@pytest.mark.parametrize(
    ("route", "body", "fallback", "expected"),
    [
        # prompt chars / 4 (rounded up) + max tokens
        (CHAT, {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50}, 999, 150),
        (CHAT, {"messages": [{"role": "user", "content": "x" * 401}], "max_completion_tokens": 10}, 0, 111),
        (
            CHAT,
            {"messages": [{"content": [{"type": "text", "text": "x" * 40}]}], "max_tokens": 5, "n": 2},
            0,
            20,
        ),
        # no output limit: the job type's estimate, unless the prompt alone is larger
        (CHAT, {"messages": [{"role": "user", "content": "hi"}]}, 500, 500),
        (CHAT, {"messages": [{"role": "user", "content": "x" * 4000}]}, 500, 1000),
        (COMPLETIONS, {"prompt": ["x" * 20, "y" * 20], "max_tokens": 1}, 0, 11),
        (EMBEDDINGS, {"input": "x" * 80}, 500, 20),
        (EMBEDDINGS, {"input": [[1, 2, 3, 4]]}, 500, 4),
        (GENERATE, {"prompt": "x" * 40, "system": "y" * 40, "options": {"num_predict": 100}}, 0, 120),
        (OLLAMA_CHAT, {"messages": [{"role": "user", "content": "x" * 8}]}, 300, 300),
        (CHAT, {"messages": "not a list", "max_tokens": True}, 7, 7),
    ],
)
def test_estimate_tokens(route: Any, body: dict[str, Any], fallback: int, expected: int) -> None:
    assert estimate_tokens(route, body, fallback) == expected


@pytest.mark.parametrize(
    ("route", "body", "expected"),
    [
        (CHAT, {}, False),
        (CHAT, {"stream": True}, True),
        (GENERATE, {}, True),  # Ollama streams unless told not to
        (OLLAMA_CHAT, {"stream": False}, False),
        (EMBEDDINGS, {"stream": True}, False),
        (CHAT, {"stream": "yes"}, False),
    ],
)
def test_wants_stream(route: Any, body: dict[str, Any], expected: bool) -> None:
    assert wants_stream(route, body) is expected


def test_stream_usage_is_added_unless_asked_for() -> None:
    body, asked = with_stream_usage({"stream": True, "stream_options": {"other": 1}})
    assert body["stream_options"] == {"other": 1, "include_usage": True} and not asked
    body, asked = with_stream_usage({"stream": True, "stream_options": {"include_usage": True}})
    assert asked


@pytest.mark.parametrize(
    ("route", "doc", "expected"),
    [
        (CHAT, {"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}, 7),
        (CHAT, {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}, 7),
        (EMBEDDINGS, {"usage": {"prompt_tokens": 9, "total_tokens": 9}}, 9),
        (CHAT, {"choices": []}, None),
        (GENERATE, {"done": True, "prompt_eval_count": 5, "eval_count": 6}, 11),
        (OLLAMA_CHAT, {"done": True, "eval_count": 6}, 6),
        (OLLAMA_CHAT, {"done": True}, None),
    ],
)
def test_usage_from_json(route: Any, doc: dict[str, Any], expected: int | None) -> None:
    assert usage_from_json(route, json.dumps(doc).encode()) == expected
    assert usage_from_json(route, b"not json") is None


def sse(*docs: Any) -> bytes:
    return b"".join(
        b"data: " + (d if isinstance(d, bytes) else json.dumps(d).encode()) + b"\n\n" for d in docs
    )


CHUNK = {"choices": [{"delta": {"content": "a"}}], "usage": None}
USAGE = {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}}


@pytest.mark.parametrize("strip", [True, False])
@pytest.mark.parametrize("split", [1, 7, 1000])
def test_sse_relay_reads_usage_and_strips_only_when_asked(strip: bool, split: int) -> None:
    stream = sse(CHUNK, CHUNK, USAGE, b"[DONE]")
    relay = SseRelay(strip_usage=strip)
    out = b"".join(relay.feed(stream[i : i + split]) for i in range(0, len(stream), split)) + relay.finish()
    assert relay.tokens == 5 and relay.done
    assert out == (sse(CHUNK, CHUNK, b"[DONE]") if strip else stream)


def test_sse_relay_crlf_and_unterminated_tail() -> None:
    relay = SseRelay(strip_usage=False)
    out = relay.feed(b"data: " + json.dumps(CHUNK).encode() + b"\r\n\r\ndata: [DONE]")
    assert out.endswith(b"\r\n\r\n")
    assert relay.finish() == b"data: [DONE]" and relay.done


@pytest.mark.parametrize("split", [1, 5, 1000])
def test_ndjson_relay_passes_chunks_and_reads_the_final_counts(split: int) -> None:
    lines = [{"response": "a", "done": False}, {"done": True, "prompt_eval_count": 4, "eval_count": 8}]
    stream = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    relay = NdjsonRelay()
    chunks = [stream[i : i + split] for i in range(0, len(stream), split)]
    assert [relay.feed(c) for c in chunks] == chunks
    relay.finish()
    assert relay.tokens == 12 and relay.done


@pytest.mark.parametrize(
    ("base", "path", "expected"),
    [
        ("http://h:11434", "/api/chat", "http://h:11434/api/chat"),
        ("http://h:8000/", "/v1/embeddings", "http://h:8000/v1/embeddings"),
        ("https://api.example/v1", "/v1/chat/completions", "https://api.example/v1/chat/completions"),
        ("http://h/prefix", "/v1/completions", "http://h/prefix/v1/completions"),
    ],
)
def test_target_url(base: str, path: str, expected: str) -> None:
    assert target_url(base, path) == expected


def test_shown_url_hides_credentials() -> None:
    assert shown_url("http://user:secret@h:1/v1") == "http://h:1/v1"


def test_key_variables() -> None:
    assert upstream_key_env("gpt-4o-mini") == "FLEET_LIMITER_UPSTREAM_KEY_GPT_4O_MINI"
    spec, _ = parse_policy(
        {
            "models": [
                {"name": "by-env", "limits": {"maxConcurrentRequests": 1},
                 "upstream": {"url": "http://h", "apiKeyEnv": "MY_KEY"}},
                {"name": "by-secret", "limits": {"maxConcurrentRequests": 1},
                 "upstream": {"url": "http://h", "apiKeySecretRef": {"name": "s", "key": "k"}}},
                {"name": "open", "limits": {"maxConcurrentRequests": 1}, "upstream": {"url": "http://h"}},
            ],
            "jobTypes": [{"name": "j", "ratio": 1}],
        }
    )  # fmt: skip
    env = {"MY_KEY": "k1", "FLEET_LIMITER_UPSTREAM_KEY_BY_SECRET": "k2"}
    assert api_key(spec.model("by-env"), env) == "k1"
    assert api_key(spec.model("by-secret"), env) == "k2"
    assert api_key(spec.model("open"), env) is None
    with pytest.raises(UpstreamKeyMissing) as err:
        api_key(spec.model("by-env"), {})
    assert err.value.variable == "MY_KEY"
