"""Fixtures of the metrics tests: one real `fleet-limiter serve` (tests/support/fleet.py, the
session's private redis-server) in front of the stand-in LLM server, used the way a fleet is
(leases, refusals, a proxied request on a credit key, a consume), and the operator's metrics served
in process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.support.fleet import Fleet, Instance
from tests.support.http import http
from tests.support.redis_server import RedisServer

ADMIN_TOKEN = "metrics-tests-admin-token"
KEY = "metrics-tests-credit-key-01"
MODEL = "metrics-model"


def admin(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """An admin call (the credit key routes need the admin token): (status, answer)."""
    status, doc, _ = http(method, url, body, token=ADMIN_TOKEN)
    return status, doc


def scrape(url: str) -> str:
    """GET a /metrics endpoint."""
    status, text, headers = http("GET", url)
    assert status == 200, text
    assert headers["Content-Type"].startswith("text/plain"), headers
    return str(text)


def policy_spec(upstream: str) -> dict[str, Any]:
    """Two job types on one proxied model with a window limit, a memory budget and credit keys."""
    return {
        "models": [
            {
                "name": MODEL,
                "limits": {"tokensPerMinute": 100000, "maxConcurrentRequests": 4},
                "upstream": {"url": upstream, "protocol": "openai"},
            }
        ],
        "jobTypes": [
            {"name": "chat", "ratio": 0.5, "estimate": {"tokens": 500, "memoryKB": 1024}},
            {
                "name": "batch",
                "ratio": 0.5,
                "flexible": False,
                "estimate": {"tokens": 1000, "memoryKB": 1024},
                "queue": {"maxWaiting": 1, "maxWaitSeconds": 0.3},
            },
        ],
        "instance": {"memoryBudgetMB": 64},
        "credits": {"enforce": True, "unit": "tokens"},
    }


@pytest.fixture(scope="package")
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="package")
def used_instance(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    llm: FakeLLMServer,
) -> Iterator[Instance]:
    """An instance after a little of everything: two chat leases (one released), batch refusals
        (no wait, queue full, timeout), an unknown job type, a proxied request charged to a credit key,
        a consume allowed and one refused. Once for the metrics tests, which only read it; stopped after
    them, so no instance of theirs writes to the session's Redis while other suites flush it."""
    redis_server.start()
    instances = Fleet(tmp_path_factory.mktemp("metrics"), redis_server.url)
    try:
        instances.write_policy("metrics", policy_spec(llm.url))
        (inst,) = instances.start(1, env={"FLEET_LIMITER_ADMIN_TOKEN": ADMIN_TOKEN})
        exercise(inst)
        yield inst
    finally:
        instances.close()


def exercise(inst: Instance) -> None:
    status, lease, _ = inst.post("/api/jobs/acquire", {"jobType": "chat", "waitSeconds": 5})
    assert status == 200, lease
    assert inst.post(f"/api/jobs/{lease['leaseId']}/release", {"actual": {"tokens": 400}})[0] == 200
    status, held, _ = inst.post("/api/jobs/acquire", {"jobType": "chat", "waitSeconds": 5})
    assert status == 200, held  # held to the end: in flight, budget used
    batch = inst.allocation()["slotsByJobTypeAndModel"]["batch"][MODEL]["slots"]
    for _ in range(batch):  # batch is fixed: it never borrows, so this fills it
        assert inst.post("/api/jobs/acquire", {"jobType": "batch", "waitSeconds": 5})[0] == 200
    assert inst.post("/api/jobs/acquire", {"jobType": "batch", "waitSeconds": 0})[0] == 503  # no_wait
    assert inst.post("/api/jobs/acquire", {"jobType": "batch"})[0] == 503  # waits 0.3 s: timeout
    assert inst.post("/api/jobs/acquire", {"jobType": "nightly"})[0] == 404  # invalid
    assert admin("PUT", f"{inst.url}/api/keys/{KEY}", {"credits": 1000})[0] in (200, 201)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    status, answer, _ = http("POST", f"{inst.url}/v1/chat/completions", chat)
    assert status == 401, answer  # no credit key
    status, answer, _ = http(
        "POST", f"{inst.url}/v1/chat/completions", chat, token=KEY, headers={"X-Job-Type": "chat"}
    )
    assert status == 200, answer
    assert inst.post(f"/api/keys/{KEY}/consume", {"cost": 10})[0] == 200
    assert inst.post(f"/api/keys/{KEY}/consume", {"cost": 100000})[0] == 429


@pytest.fixture(scope="package")
def limiter_scrape(used_instance: Instance) -> str:
    return scrape(used_instance.url + "/metrics")


ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "fleet-limiter" / "dashboards" / "fleet-limiter.json"
