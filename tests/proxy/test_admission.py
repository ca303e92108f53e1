"""Admission through the proxy on real instances: parallel limits, bounded queues with fast 503s,
stats that add up, slots shared across the fleet, and the admin update."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.proxy.conftest import ENV, admin_update, burst, model, settled, spec, stats
from tests.support.fleet import Fleet, Instance
from tests.support.waiting import wait_until

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


def job(max_waiting: int) -> list[dict[str, Any]]:
    return [{"name": "chat", "ratio": 1.0, "estimate": {"tokens": 100}, "queue": {"maxWaiting": max_waiting}}]


@pytest.mark.timeout(60)
async def test_parallel_one_queue_two_burst_of_ten(fleet: Fleet, llm: FakeLLMServer) -> None:
    fleet.write_policy("burst", spec([model("burst", llm.url, limits={"maxConcurrentRequests": 1})], job(2)))
    (inst,) = fleet.start(1, env=ENV)
    doc = stats(inst, "burst")
    assert (doc["parallel_limit"], doc["queue_limit"]) == (1, 2)
    llm.behave("burst", latency=1.0)
    answers = await burst(inst.url + "/v1/chat/completions", {"model": "burst", **CHAT}, 10)
    ok = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status == 503]
    assert (len(ok), len(refused)) == (3, 7)
    for a in refused:
        assert int(a.headers["Retry-After"]) >= 1
        assert a.seconds < 0.5, "a full queue must refuse at once"
        doc = a.json()
        assert doc["reason"] == "queue_full" and "is full" in doc["error"]["message"]
        assert doc["limit"] == {"name": "queue_limit", "model": "burst", "value": 2}
        assert doc["retryAfterSeconds"] == int(a.headers["Retry-After"]) and doc["position"] == 3
    assert llm.peak["burst"] == 1
    settled(inst, "burst")
    doc = stats(inst, "burst")
    assert (doc["total_processed"], doc["total_rejected"]) == (3, 7)
    assert doc["avg_wait_time_ms"] > 0 and doc["avg_processing_time_ms"] >= 1000


@pytest.mark.timeout(90)
async def test_hundred_clients_parallel_four_queue_sixteen(fleet: Fleet, llm: FakeLLMServer) -> None:
    fleet.write_policy("crowd", spec([model("crowd", llm.url, limits={"maxConcurrentRequests": 4})], job(16)))
    (inst,) = fleet.start(1, env=ENV)
    llm.behave("crowd", latency=0.3)
    peaks = {"active_requests": 0, "queued_requests": 0}
    stop = asyncio.Event()

    async def watch() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                async with session.get(inst.url + "/queue/stats?model=crowd") as resp:
                    doc = (await resp.json())["models"]["crowd"]
                for k in peaks:
                    peaks[k] = max(peaks[k], doc[k])
                await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        async with asyncio.timeout(60):
            answers = await burst(inst.url + "/v1/chat/completions", {"model": "crowd", **CHAT}, 100)
    finally:
        stop.set()
        await watcher
    statuses = [a.status for a in answers]
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 20  # 4 running and 16 queued, at least
    assert all("Retry-After" in a.headers for a in answers if a.status == 503)
    assert peaks["active_requests"] <= 4 and peaks["queued_requests"] <= 16
    assert peaks["queued_requests"] == 16  # the watcher saw the queue full
    assert llm.peak["crowd"] <= 4
    settled(inst, "crowd")
    doc = stats(inst, "crowd")
    assert doc["total_processed"] + doc["total_rejected"] == 100
    assert doc["total_processed"] == statuses.count(200)


@pytest.mark.timeout(60)
async def test_instances_share_a_models_slots(fleet: Fleet, llm: FakeLLMServer) -> None:
    fleet.write_policy("shared", spec([model("shared", llm.url, limits={"maxConcurrentRequests": 12})]))
    a, b = fleet.start(2, env=ENV)
    wait_until(
        lambda: stats(a, "shared")["parallel_limit"] == 6 and stats(b, "shared")["parallel_limit"] == 6, 2
    )
    llm.behave("shared", latency=0.4)
    answers = await burst(a.url + "/v1/chat/completions", {"model": "shared", **CHAT}, 9)
    assert all(x.status == 200 for x in answers)
    assert llm.peak["shared"] == 6  # a's half of the fleet's 12, however many wait
    (c,) = fleet.start(1, env=ENV)
    wait_until(lambda: all(stats(i, "shared")["parallel_limit"] == 4 for i in (a, b, c)), 2)
    assert a.get("/health")["concurrency"]["default_parallel"] == 4


@pytest.mark.timeout(60)
async def test_admin_update_lowers_never_raises(fleet: Fleet, llm: FakeLLMServer) -> None:
    fleet.write_policy("admin", spec([model("adm", llm.url, limits={"maxConcurrentRequests": 4})], job(512)))
    (inst,) = fleet.start(1, env=ENV)
    for token in (None, "wrong-token"):
        status, doc, headers = admin_update(inst, {"model": "adm", "parallel_limit": 1}, token=token)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer", doc
    assert stats(inst, "adm")["parallel_limit"] == 4

    status, doc, _ = admin_update(inst, {"model": "adm", "parallel_limit": 2})
    assert status == 200 and doc["parallel_limit"] == 2 and doc["capped"] is False, doc
    llm.behave("adm", latency=0.3)
    answers = await burst(inst.url + "/v1/chat/completions", {"model": "adm", **CHAT}, 6)
    assert all(a.status == 200 for a in answers) and llm.peak["adm"] == 2

    status, doc, _ = admin_update(inst, {"model": "adm", "parallel_limit": 100})
    assert status == 200 and doc["capped"] is True and doc["parallel_limit"] == 4, doc
    assert "capped at 4" in doc["message"] and doc["requested_parallel_limit"] == 100
    assert stats(inst, "adm")["parallel_limit"] == 4

    status, doc, _ = admin_update(inst, {"model": "adm", "parallel_limit": 1, "queue_limit": 1})
    llm.behave("adm", latency=0.8)
    assert (doc["parallel_limit"], doc["queue_limit"]) == (1, 1)
    answers = await burst(inst.url + "/v1/chat/completions", {"model": "adm", **CHAT}, 4)
    assert sorted(a.status for a in answers) == [200, 200, 503, 503]

    status, doc, _ = admin_update(inst, {"model": "adm", "parallel_limit": None, "queue_limit": None})
    assert (doc["parallel_limit"], doc["queue_limit"]) == (4, 512)
    settled(inst, "adm")


@pytest.fixture(scope="module")
def admin_proxy(module_fleet: Fleet, module_llm: FakeLLMServer) -> Instance:
    module_fleet.write_policy("admin-bad", spec([model("adm", module_llm.url)]))
    (inst,) = module_fleet.start(1, env=ENV)
    return inst


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"parallel_limit": 1}, 400, "model"),
        ({"model": "adm"}, 400, "parallel_limit or queue_limit"),
        ({"model": "adm", "parallel_limit": -1}, 400, "parallel_limit"),
        ({"model": "adm", "queue_limit": "many"}, 400, "queue_limit"),
        ({"model": "adm", "parallel": 1}, 400, "parallel"),
        ({"model": "nope", "parallel_limit": 1}, 404, "nope"),
    ],
)
def test_admin_update_bad_bodies(
    admin_proxy: Instance, body: dict[str, Any], status: int, names: str
) -> None:
    got, doc, _ = admin_update(admin_proxy, body)
    assert got == status and names in doc["error"], doc
    assert stats(admin_proxy, "adm")["parallel_limit"] == 8


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "limits", [{"tokensPerMinute": 1_000_000}, {"maxConcurrentRequests": 50}], ids=["windowed", "concurrency"]
)
async def test_admin_bounds_hold_on_every_model_and_waiting_holds_no_lease(
    fleet: Fleet, llm: FakeLLMServer, limits: dict[str, int]
) -> None:
    name = "tpm-burst" if "tokensPerMinute" in limits else "conc-burst"
    fleet.write_policy(name, spec([model(name, llm.url, limits=limits)], job(64)))
    (inst,) = fleet.start(1, env=ENV)
    status, doc, _ = admin_update(inst, {"model": name, "parallel_limit": 1, "queue_limit": 2})
    assert status == 200 and (doc["parallel_limit"], doc["queue_limit"]) == (1, 2), doc
    llm.behave(name, latency=1.0)
    seen = {"leases": 0, "waiting": 0, "active": 0}
    stop = asyncio.Event()

    async def watch() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                async with session.get(inst.url + "/api/debug/allocation") as resp:
                    jobs = (await resp.json())["jobTypes"]
                async with session.get(inst.url + f"/queue/stats?model={name}") as resp:
                    q = (await resp.json())["models"][name]
                seen["leases"] = max(seen["leases"], sum(j["inFlight"] for j in jobs.values()))
                seen["waiting"] = max(seen["waiting"], q["queued_requests"])
                seen["active"] = max(seen["active"], q["active_requests"])
                await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        answers = await burst(inst.url + "/v1/chat/completions", {"model": name, **CHAT}, 10)
    finally:
        stop.set()
        await watcher
    ok = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status == 503]
    assert (len(ok), len(refused)) == (3, 7), [a.status for a in answers]
    for a in refused:
        assert a.seconds < 0.5, "a full queue must refuse at once, holding nothing"
        doc = a.json()
        assert doc["reason"] == "queue_full" and doc["limit"]["name"] == "queue_limit"
        assert doc["limit"]["value"] == 2 and "is full (2 waiting)" in doc["error"]["message"]
    assert llm.peak[name] == 1
    # Waiting requests hold no lease: never more leases than requests forwarding (parallel_limit 1).
    assert seen == {"leases": 1, "waiting": 2, "active": 1}, seen
    settled(inst, name)
    doc = stats(inst, name)
    assert (doc["total_processed"], doc["total_rejected"]) == (3, 7)
