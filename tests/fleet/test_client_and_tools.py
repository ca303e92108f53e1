"""The Python client, `fleet-limiter top` and `make run`'s local fleet, against real instances."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from limiter.client import LimiterClient, LimiterError, NoCapacity
from tests.support.fleet import EXE, Fleet
from tests.support.waiting import wait_until

ROOT = Path(__file__).parents[2]
SPEC = {
    "models": [{"name": "m", "limits": {"tokensPerMinute": 100000, "maxConcurrentRequests": 2}}],
    "jobTypes": [{"name": "summary", "ratio": 1.0, "estimate": {"tokens": 10000}}],
}


@pytest.mark.timeout(60)
async def test_client_job_releases_with_reported_usage_and_on_errors(fleet: Fleet) -> None:
    fleet.write_policy("client", SPEC)
    (inst,) = fleet.start(1)
    async with LimiterClient(inst.url) as client:
        async with client.job("summary") as lease:
            assert lease.model == "m" and lease.reserved["tokens"] == 10000
            assert (await client.allocation())["jobTypes"]["summary"]["inFlight"] == 1
            lease.report(tokens=2500)
        doc = await client.allocation()
        assert doc["jobTypes"]["summary"]["inFlight"] == 0
        assert doc["budgets"]["m"]["tokensPerMinute"]["used"] == 2500  # the rest was refunded
        with pytest.raises(RuntimeError, match="job failed"):
            async with client.job("summary"):
                raise RuntimeError("job failed")
        assert (await client.allocation())["jobTypes"]["summary"]["inFlight"] == 0  # released anyway
        held = [await client.acquire("summary") for _ in range(2)]
        with pytest.raises(NoCapacity) as info:
            await client.acquire("summary", wait_seconds=0.2)
        assert info.value.status == 503 and info.value.retry_after >= 1
        assert info.value.reason == "parallel_limit" and info.value.limit is not None
        assert info.value.limit["name"] == "slots" and info.value.limit["jobType"] == "summary"
        with pytest.raises(LimiterError) as bad:
            await client.acquire("nope")
        assert bad.value.status == 404 and "unknown job type 'nope'" in bad.value.message
        for lease in held:
            await client.release(lease)


@pytest.mark.timeout(60)
def test_top_renders_a_frame_of_a_running_fleet(fleet: Fleet) -> None:
    # A proxied model (its upstream is never called here) gives top a proxy queue to show.
    proxied = {**SPEC["models"][0], "upstream": {"url": "http://127.0.0.1:9"}}  # type: ignore[dict-item]
    fleet.write_policy("top", {**SPEC, "models": [proxied]})
    a, b = fleet.start(2)
    wait_until(lambda: a.allocation()["allocation"]["instanceCount"] == 2, timeout=1)
    out = subprocess.run(
        [str(EXE), "top", "--url", a.url, "--url", b.url, "--once"],
        capture_output=True, text=True, timeout=30, env={"COLUMNS": "80", "PATH": ""},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert a.id in out.stdout and b.id in out.stdout
    assert a.url.removeprefix("http://") in out.stdout and b.url.removeprefix("http://") in out.stdout
    assert "summary" in out.stdout and "0/1 1.00" in out.stdout  # in flight/slots and current ratio
    assert "concurrent" in out.stdout and "proxy queues" in out.stdout and "0/1 0/512" in out.stdout
    # Discovery through Redis finds both instances too.
    out = subprocess.run(
        [str(EXE), "top", "--redis", fleet.redis_url, "--policy", "tests/top", "--once"],
        capture_output=True, text=True, timeout=30, env={"COLUMNS": "140", "PATH": ""},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert a.id in out.stdout and b.id in out.stdout
    bad = subprocess.run([str(EXE), "top", "--redis", fleet.redis_url, "--policy", "nope"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert bad.returncode == 2 and "--policy: 'nope' is not valid" in bad.stderr


@pytest.mark.timeout(90)
def test_local_fleet_demo_runs_and_stops_cleanly() -> None:
    out = subprocess.run(
        [sys.executable, "-P", str(ROOT / "tools" / "localfleet.py"), "--duration", "2", "--instances", "3"],
        capture_output=True, text=True, timeout=80, env={"COLUMNS": "140", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "fleet of 3 ready" in out.stdout and "instance-3" in out.stdout
    assert "jobs completed" in out.stdout and "stopped" in out.stdout
