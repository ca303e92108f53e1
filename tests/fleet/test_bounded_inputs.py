"""Bad input to a real instance never yields a 500, a traceback or a lifted limit (issue: never
over-admit): huge and deep JSON, numbers out of range, strings for numbers, and a release whose
reported usage could switch a model's limits off or block it for the day."""

from __future__ import annotations

import pytest
import redis

from tests.support.fleet import Fleet, Instance
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for_fresh_minute

POLICY = {
    "models": [{"name": "m", "limits": {"tokensPerMinute": 100000, "tokensPerDay": 1000000}}],
    "jobTypes": [{"name": "a", "ratio": 1, "estimate": {"tokens": 1000}}],
}


def raw_post(inst: Instance, path: str, raw: bytes) -> tuple[int, object]:
    status, doc, _ = inst.post(path, raw)
    return status, doc


@pytest.mark.timeout(60)
def test_hostile_bodies_are_400s_naming_the_problem(fleet: Fleet) -> None:
    fleet.write_policy("hostile", POLICY)
    (inst,) = fleet.start(1)
    cases = {
        b'{"jobType": "a", "waitSeconds": ' + b"9" * 5000 + b"}": "not valid JSON",
        b'{"jobType": "a", "estimate": ' + b"[" * 5000 + b"]" * 5000 + b"}": "nested",
        b'{"jobType": "a", "estimate": {"tokens": "5"}}': "estimate.tokens",
        b'{"jobType": "a", "estimate": {"tokens": 1000000000000000000}}': "estimate.tokens",
        b'{"jobType": "a", "waitSeconds": 1e308}': "waitSeconds",
        b'{"jobType": "a", "waitSeconds": NaN}': "waitSeconds",
        b"[1, 2]": "expected a JSON object",
        b'{"jobType": "a", "estimate": {"tokens": 100001}}': "estimate.tokens: 100001 is not valid",
    }
    for raw, named in cases.items():
        status, doc = raw_post(inst, "/api/jobs/acquire", raw)
        assert status == 400, (raw[:60], status, doc)
        assert isinstance(doc, dict) and named in doc["error"], (raw[:60], doc)
    status, doc = raw_post(inst, "/api/jobs/1/release", b'{"actual": ' + b"{" * 3000 + b"}" * 3000 + b"}")
    assert status == 400 and isinstance(doc, dict), doc
    assert "Traceback" not in inst.log() and "internal error" not in inst.log()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case, tokens", list(enumerate([10**30, 2**63 - 1, 10**18, 100001])))
def test_a_release_above_one_jobs_bound_is_refused_and_the_limit_holds(
    fleet: Fleet, redis_server: RedisServer, case: int, tokens: int
) -> None:
    fleet.write_policy(f"release-{case}", POLICY)
    (inst,) = fleet.start(1)
    wait_for_fresh_minute(redis_server, need_seconds=20)  # the whole case in one UTC minute
    status, lease, _ = inst.post("/api/jobs/acquire", {"jobType": "a"})
    assert status == 200, lease
    status, doc, _ = inst.post(f"/api/jobs/{lease['leaseId']}/release", {"actual": {"tokens": tokens}})
    assert status == 400, doc
    assert "actual.tokens" in doc["error"] and (
        "at most 100000" in doc["error"] or "less than" in doc["error"]
    ), doc
    # The lease is still held (no state lost): a valid report releases it and is charged in full.
    status, doc, _ = inst.post(f"/api/jobs/{lease['leaseId']}/release", {"actual": {"tokens": 100000}})
    assert status == 200 and doc["charged"] == {"tokensPerMinute": 99000, "tokensPerDay": 99000}, doc
    # The minute is spent (100000 of 100000): nothing more is admitted in it, and no counter wrapped.
    status, doc, _ = inst.post("/api/jobs/acquire", {"jobType": "a", "waitSeconds": 0})
    assert status == 503, doc
    client = redis.Redis.from_url(redis_server.url)
    try:
        keys = client.keys(f"fl:{{*/release-{case}}}:budget:tokensPer*")
        used = sorted(int(client.hget(key, "used") or -1) for key in keys)
    finally:
        client.close()
    assert used == [100000, 100000], used  # the minute's and the day's counter, exactly what was used
