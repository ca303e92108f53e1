"""Policies from Redis (as the operator projects them) and new generations applied live."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from limiter.redis.fleetstore import RedisStore
from limiter.redis.keys import PolicyKeys
from tests.support.fleet import EXE, Fleet, Instance
from tests.support.http import http
from tests.support.redis_server import RedisServer, free_port
from tests.support.waiting import wait_for_fresh_minute, wait_until

SPEC: dict[str, Any] = {
    "models": [{"name": "m", "limits": {"tokensPerMinute": 100000}}],
    "jobTypes": [{"name": "A", "ratio": 0.6, "estimate": {"tokens": 10000}},
                 {"name": "B", "ratio": 0.4, "estimate": {"tokens": 5000}}],
    "instance": {"heartbeatSeconds": 0.5, "instanceTimeoutSeconds": 2},
}  # fmt: skip


def start_from_redis(redis_url: str, name: str, log: BinaryIO) -> tuple[subprocess.Popen[bytes], str]:
    """`fleet-limiter serve` without a policy file, configured by environment like a pod."""
    port = free_port()
    env = {**os.environ, "FLEET_LIMITER_REDIS_URL": redis_url, "FLEET_LIMITER_POLICY_NAMESPACE": "team-a",
           "FLEET_LIMITER_POLICY_NAME": name, "FLEET_LIMITER_PORT": str(port), "POD_NAME": f"pod-{port}",
           "POD_IP": "127.0.0.1"}  # fmt: skip
    proc = subprocess.Popen([str(EXE), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def answers(url: str) -> bool:
    try:
        http("GET", url + "/health", timeout=1)
    except OSError:
        return False
    return True


def looked_for_policy(url: str) -> tuple[int, Any] | None:
    """GET /ready once the instance has looked for its policy in Redis (its reason changed)."""
    status, doc, _ = http("GET", url + "/ready")
    return None if doc.get("reason") == "joining the fleet" else (status, doc)


def slots(url: str, job: str) -> int:
    status, doc, _ = http("GET", url + "/api/debug/allocation")
    return (
        int(doc["slotsByJobTypeAndModel"][job]["m"]["slots"])
        if status == 200 and doc["slotsByJobTypeAndModel"]
        else -1
    )


@pytest.mark.timeout(60)
async def test_pod_mode_waits_for_the_projection_and_applies_new_generations_live(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    redis_server.start()
    log = (tmp_path / "pod.log").open("wb")
    proc, url = start_from_redis(redis_server.url, "live", log)
    try:
        # Listening, but not ready: it found nothing projected ("joining the fleet" until it looked).
        wait_until(lambda: answers(url), timeout=15)
        status, doc = wait_until(
            lambda: looked_for_policy(url), 5, what="the instance to find no projected policy"
        )
        assert status == 503 and "waiting for the operator to project the policy" in doc["reason"]
        async with RedisStore.from_url(redis_server.url, "team-a", "live") as store:
            assert await store.project_policy(SPEC, 1)
            wait_until(lambda: http("GET", url + "/ready")[0] == 200, timeout=5)
            assert slots(url, "A") == 6 and slots(url, "B") == 8
            # Generation 2 changes a limit and the ratios: applied without a restart.
            jobs = [{**SPEC["jobTypes"][0], "ratio": 0.5}, {**SPEC["jobTypes"][1], "ratio": 0.5}]
            spec2 = {
                **SPEC,
                "models": [{"name": "m", "limits": {"tokensPerMinute": 200000}}],
                "jobTypes": jobs,
            }
            assert await store.project_policy(spec2, 2)
            wait_until(lambda: slots(url, "A") == 10 and slots(url, "B") == 20, timeout=3)
            assert http("GET", url + "/api/debug/allocation")[1]["generation"] == 2
            assert not await store.project_policy(spec2, 2)  # same generation: a no-op
        assert proc.poll() is None  # the same process all along
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
        log.close()
    assert code == 0


@pytest.mark.timeout(60)
def test_file_instances_follow_a_newer_generation(fleet: Fleet) -> None:
    fleet.write_policy("follow", SPEC)
    (a,) = fleet.start(1)
    assert a.slots("A", "m") == 6
    # A second instance started from an edited file projects the next generation; the first follows.
    fleet.write_policy("follow", {**SPEC, "models": [{"name": "m", "limits": {"tokensPerMinute": 300000}}]})
    (b,) = fleet.start(1)
    wait_until(lambda: a.slots("A", "m") == 9 and b.slots("A", "m") == 9, timeout=3)
    assert a.allocation()["generation"] == b.allocation()["generation"] == 2


def hammer_until_refused(inst: Instance, limit: int) -> int:
    admitted = 0
    for _ in range(limit):
        status, doc, _ = inst.post("/api/jobs/acquire", {"jobType": "A", "waitSeconds": 0.3})
        if status != 200:
            break
        admitted += doc["reserved"]["tokens"]
        inst.post(f"/api/jobs/{doc['leaseId']}/release", {"actual": {"tokens": doc["reserved"]["tokens"]}})
    return admitted


def minute_used(redis: RedisServer, policy: str) -> int:
    """Tokens the fleet's budget key of model m holds as used (0 when absent)."""
    key = PolicyKeys("tests", policy).budget("m", "tokensPerMinute")
    reply = redis.command("HGET", key, "used")  # a bulk string: b"$6\r\n100000\r\n", or b"$-1\r\n"
    return 0 if reply.startswith(b"$-1") else int(reply.split(b"\r\n")[1])


@pytest.mark.timeout(120)
def test_redis_flush_mid_minute_never_readmits_the_spent_budget(
    fresh_fleet: Fleet, fresh_redis_server: RedisServer
) -> None:
    fresh_fleet.write_policy("flush", SPEC)
    a, b = fresh_fleet.start(2)
    wait_for_fresh_minute(fresh_redis_server, 30)  # keep the whole test inside one UTC minute
    spent = hammer_until_refused(a, 50) + hammer_until_refused(b, 50)
    assert spent == 100000
    fresh_redis_server.restart(flush=True)
    wait_until(lambda: http("GET", a.url + "/ready")[0] == 200 and http("GET", b.url + "/ready")[0] == 200
               and a.allocation()["allocation"]["instanceCount"] == 2, timeout=6)  # fmt: skip
    # Reconciliation charges run right after the instances notice the loss.
    wait_until(lambda: minute_used(fresh_redis_server, "flush") >= 100000, 10, what="the charges back")
    # The instances put back what they held: the minute stays spent for the whole fleet.
    assert hammer_until_refused(a, 5) == 0 and hammer_until_refused(b, 5) == 0
