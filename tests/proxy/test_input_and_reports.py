"""Bad input gets a clear JSON error naming the field; /queue/stats, /queue/memory, /health and
/metrics report the same numbers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.proxy.conftest import ENV, model, spec
from tests.support.fleet import Fleet, Instance
from tests.support.http import http

JOB_TYPES = [
    {"name": "chat", "ratio": 0.5, "estimate": {"tokens": 100, "memoryKB": 256}, "queue": {"maxWaiting": 10}},
    {"name": "batch", "ratio": 0.5, "estimate": {"tokens": 100, "memoryKB": 128}, "models": ["gpt-like"]},
]


@pytest.fixture(scope="module")
def proxy(module_fleet: Fleet, module_llm: FakeLLMServer) -> Iterator[Instance]:
    module_fleet.write_policy(
        "proxy-input",
        spec(
            [
                model("gpt-like", module_llm.url, limits={"maxConcurrentRequests": 10}),
                model("llama", module_llm.url, "ollama", limits={"maxConcurrentRequests": 4}),
                {"name": "bare", "limits": {"maxConcurrentRequests": 4}},
            ],
            JOB_TYPES,
            instance={"memoryBudgetMB": 1},
        ),
    )
    (inst,) = module_fleet.start(1, env=ENV)
    yield inst


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "says"),
    [
        ("/v1/chat/completions", {"messages": []}, {}, 400, "model: required field is missing"),
        ("/v1/chat/completions", {"model": 7}, {}, 400, "model: 7 is not valid"),
        ("/v1/chat/completions", {"model": "unknown-model"}, {}, 404, "model: unknown model 'unknown-model'"),
        ("/v1/embeddings", {"model": "bare"}, {}, 404, "model 'bare' has no upstream"),
        ("/api/generate", {"model": "bare"}, {}, 404, "has no upstream"),
        ("/v1/chat/completions", b"{not json", {}, 400, "body: not valid JSON"),
        ("/api/chat", b"[1, 2]", {}, 400, "body: expected a JSON object, got list"),
        ("/api/chat", b"", {}, 400, "body: a JSON object"),
        ("/api/generate", {"model": "gpt-like"}, {}, 400, "does not speak the Ollama API"),
        (
            "/v1/completions",
            {"model": "gpt-like"},
            {"X-Job-Type": "nightly"},
            404,
            "X-Job-Type: unknown job type",
        ),
        ("/api/chat", {"model": "llama"}, {"X-Job-Type": "batch"}, 400, "may not use model 'llama'"),
        # What sizes the reservation is checked, never forwarded or crashed on.
        ("/v1/chat/completions", {"model": "gpt-like", "messages": 5}, {}, 400, "messages: 5 is not valid"),
        (
            "/v1/chat/completions",
            {"model": "gpt-like", "messages": [], "max_tokens": -5},
            {},
            400,
            "max_tokens",
        ),
        ("/v1/completions", {"model": "gpt-like", "max_tokens": 1e308}, {}, 400, "max_tokens: 1e+308"),
        ("/v1/completions", b'{"model": "gpt-like", "max_tokens": NaN}', {}, 400, "max_tokens: NaN"),
        ("/v1/completions", {"model": "gpt-like", "max_tokens": "9"}, {}, 400, 'max_tokens: "9"'),
        ("/v1/completions", {"model": "gpt-like", "n": 0}, {}, 400, "n: 0 is not valid"),
        ("/api/generate", {"model": "llama", "options": {"num_predict": -3}}, {}, 400, "options.num_predict"),
        ("/api/chat", {"model": "llama", "messages": {"role": "user"}}, {}, 400, "messages: dict"),
        (
            "/v1/completions",
            b'{"model": "gpt-like", "prompt": ' + b"[" * 3000 + b"]" * 3000 + b"}",
            {},
            400,
            "nested",
        ),
        (
            "/v1/completions",
            b'{"model": "gpt-like", "max_tokens": ' + b"9" * 5000 + b"}",
            {},
            400,
            "not valid JSON",
        ),
    ],
)
def test_bad_requests_name_the_field(
    proxy: Instance, path: str, body: Any, headers: dict[str, str], status: int, says: str
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(proxy.url + path, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            got, doc = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        got, doc = exc.code, json.loads(exc.read())
    error = doc["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert got == status and says in message, doc
    assert doc["status"] == status
    # OpenAI paths answer in OpenAI's error shape, Ollama paths in Ollama's.
    assert isinstance(error, dict) == path.startswith("/v1/")


def test_oversized_body_is_413(proxy: Instance) -> None:
    status, doc, _ = http(
        "POST", proxy.url + "/v1/chat/completions", b'{"model": "' + b"x" * (9 << 20) + b'"}'
    )
    assert status == 413 and "body: larger than" in doc["error"]["message"]


def test_get_on_a_proxied_path_is_405(proxy: Instance) -> None:
    status, doc, _ = http("GET", proxy.url + "/v1/chat/completions")
    assert status == 405 and "not allowed" in doc["error"]


def test_queue_stats_shape_and_unknown_model(proxy: Instance) -> None:
    doc = proxy.get("/queue/stats")
    assert set(doc) == {"default_parallel", "default_queue_limit", "models"}
    assert set(doc["models"]) == {"gpt-like", "llama"}  # models with an upstream only
    entry = doc["models"]["gpt-like"]
    assert set(entry) == {
        "active_requests", "parallel_limit", "queued_requests", "queue_limit",
        "total_processed", "total_rejected", "avg_wait_time_ms", "avg_processing_time_ms",
    }  # fmt: skip
    # 1 MiB of memory: chat gets floor(1024 * 0.5 / 256) = 2 slots, batch floor(1024 * 0.5 / 128) = 4.
    assert entry["parallel_limit"] == 6 and doc["models"]["llama"]["parallel_limit"] == 2
    # Queue limits: maxWaiting summed over the job types that may use the model.
    assert entry["queue_limit"] == 10 + 512 and doc["models"]["llama"]["queue_limit"] == 10
    assert (doc["default_parallel"], doc["default_queue_limit"]) == (2, 10)
    assert proxy.get("/queue/stats?model=llama")["models"].keys() == {"llama"}
    for name in ("unknown-model", "bare"):
        status, err, _ = http("GET", proxy.url + f"/queue/stats?model={name}")
        assert status == 404 and "not a proxied model" in err["error"]


def test_memory_and_health_agree(proxy: Instance) -> None:
    memory = proxy.get("/queue/memory")
    for k in ("total_gb", "available_gb", "used_gb", "percent", "recommended_parallel"):
        assert isinstance(memory[k], int | float), k
    assert memory["total_gb"] > 0 and 0 <= memory["percent"] <= 100
    assert abs(memory["used_gb"] + memory["available_gb"] - memory["total_gb"]) < 0.01
    # Budget 1024 KiB and the largest memoryKB 256: four requests fit (the parallel limits allow 8).
    assert memory["recommended_parallel"] == 4
    health = proxy.get("/health")["concurrency"]
    stats = proxy.get("/queue/stats")
    assert health["default_parallel"] == stats["default_parallel"]
    assert health["default_queue_limit"] == stats["default_queue_limit"]
    assert health["total_models"] == len(stats["models"]) == 2
    assert (
        health["memory"]["recommended_parallel"] == 4 and health["memory"]["total_gb"] == memory["total_gb"]
    )


def test_metrics_per_model(proxy: Instance) -> None:
    status, _, _ = http("POST", proxy.url + "/api/chat", {"model": "llama", "stream": False})
    assert status == 200
    status, text, _ = http("GET", proxy.url + "/metrics")
    assert status == 200
    for line in (
        'fleet_limiter_proxy_active{model="llama"} 0.0',
        'fleet_limiter_proxy_queued{model="llama"} 0.0',
        'fleet_limiter_proxy_parallel_limit{model="llama"} 2.0',
        'fleet_limiter_proxy_queue_limit{model="llama"} 10.0',
        'fleet_limiter_proxy_processed_total{model="llama"} 1.0',
        'fleet_limiter_proxy_rejected_total{model="llama"} 0.0',
        'fleet_limiter_proxy_requests_total{model="llama",outcome="ok"} 1.0',
        'fleet_limiter_proxy_wait_seconds_count{model="llama"} 1.0',
        'fleet_limiter_proxy_processing_seconds_count{model="llama"} 1.0',
        'fleet_limiter_proxy_tokens_total{kind="actual",model="llama"} 18.0',
    ):
        assert line in text.splitlines(), line
