"""The window budgets and the credit budgets through the same faults as the leases: a model with
``tokensPerMinute: 20000`` (jobs of 1,000 tokens: 20 a minute) and one API key of 200 credits, both
spent within the first second by clients that keep asking, then Redis flushed, restarted empty,
failed over to its replica, or an instance SIGKILLed. Counted on the clients' side: the tokens
admitted in each minute never exceed the limit, the credits allowed never exceed the budget.

When Redis loses its data the key's budget is gone with it (consumes answer 404: nothing is allowed
on a key that no longer exists; persistence is what keeps budgets, docs/credits.md); the windows
come back from the instances, which charge back what they drew of the current windows.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.faults.load import RESULTS, machine
from tests.support.fleet import Fleet, Instance
from tests.support.forwarder import Forwarder
from tests.support.http import http
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

TPM = 20_000
JOB_TOKENS = 1_000
CREDITS = 200
CLIENTS = 20  # of each kind
ADMIN_TOKEN = "faults-admin-token"
POLICY: dict[str, Any] = {
    "models": [{"name": "w", "limits": {"tokensPerMinute": TPM}}],
    "jobTypes": [{"name": "a", "ratio": 1, "estimate": {"tokens": JOB_TOKENS}}],
    "instance": {"heartbeatSeconds": 0.5, "instanceTimeoutSeconds": 2},
}
KEY = "sk-faults-budget-key"


class Spend:
    """``CLIENTS`` loops taking leases on ``w`` (no waiting) and releasing them with 1,000 tokens
    used, and ``CLIENTS`` loops consuming 1 credit of ``KEY``, spread over the instances. A lease is
    counted in the UTC minute it was asked for and answered in (one straddling a minute's end is
    counted apart, as ``straddling``)."""

    def __init__(self, instances: list[Instance]) -> None:
        self.urls = [i.url for i in instances]
        self.tokens: Counter[int] = Counter()
        self.straddling = 0
        self.allowed = 0
        self.answers: Counter[str] = Counter()
        self._stop = asyncio.Event()

    async def _post(
        self, session: aiohttp.ClientSession, url: str, path: str, body: Any
    ) -> tuple[str, int, Any]:
        """POST to one instance: (the instance to use next, status, body); status 0 when it did
        not answer (killed, or Redis failing over), and the next instance is tried then."""
        try:
            async with session.post(url + path, json=body) as r:
                return url, r.status, await r.json()
        except (aiohttp.ClientError, TimeoutError):
            await asyncio.sleep(0.1)
            return self.urls[(self.urls.index(url) + 1) % len(self.urls)], 0, None

    async def _leaser(self, session: aiohttp.ClientSession, n: int) -> None:
        url = self.urls[n % len(self.urls)]
        while not self._stop.is_set():
            asked = time.time()
            url, status, doc = await self._post(
                session, url, "/api/jobs/acquire", {"jobType": "a", "waitSeconds": 0}
            )
            self.answers[f"lease {status or 'unanswered'}"] += 1
            if status != 200:
                await asyncio.sleep(0.05)
                continue
            minute, answered = int(asked // 60), int(time.time() // 60)
            if minute == answered:
                self.tokens[minute] += JOB_TOKENS
            else:
                self.straddling += 1
            await self._post(
                session, url, f"/api/jobs/{doc['leaseId']}/release", {"actual": {"tokens": JOB_TOKENS}}
            )

    async def _spender(self, session: aiohttp.ClientSession, n: int) -> None:
        url = self.urls[n % len(self.urls)]
        while not self._stop.is_set():
            url, status, doc = await self._post(session, url, f"/api/keys/{KEY}/consume", {"cost": 1})
            self.answers[f"consume {status or 'unanswered'}"] += 1
            if status == 200 and doc.get("allowed"):
                self.allowed += 1
            await asyncio.sleep(0.05)

    async def run(self, seconds: float, fault: Any, at: float) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
            started = time.monotonic()
            tasks = [asyncio.create_task(self._leaser(session, n)) for n in range(CLIENTS)]
            tasks += [asyncio.create_task(self._spender(session, n)) for n in range(CLIENTS)]
            await asyncio.sleep(at)
            await asyncio.to_thread(fault)
            await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
            self._stop.set()
            await asyncio.gather(*tasks)


def record(case: str, spend: Spend) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "case": case,
        "instances": 3,
        "clients": 2 * CLIENTS,
        "tokens_per_minute": TPM,
        "job_tokens": JOB_TOKENS,
        "max_tokens_in_a_minute": max(spend.tokens.values(), default=0),
        "minutes": len(spend.tokens),
        "tokens_by_minute": {
            time.strftime("%H:%M", time.gmtime(m * 60)): n for m, n in sorted(spend.tokens.items())
        },
        "straddling_leases": spend.straddling,
        "credits": CREDITS,
        "credits_allowed": spend.allowed,
        "answers": dict(sorted(spend.answers.items())),
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (RESULTS / f"{case}.json").write_text(json.dumps(doc) + "\n")
    print(doc)
    return doc


def start(fleet: Fleet) -> list[Instance]:
    fleet.write_policy("budgets", POLICY)
    instances = fleet.start(3, env={"FLEET_LIMITER_ADMIN_TOKEN": ADMIN_TOKEN})
    wait_until(lambda: all(i.allocation()["allocation"]["instanceCount"] == 3 for i in instances), timeout=5)
    status, doc, _ = http(
        "PUT", instances[0].url + f"/api/keys/{KEY}", {"credits": CREDITS}, token=ADMIN_TOKEN
    )
    assert status == 201 and doc["created"], doc
    return instances


def check(doc: dict[str, Any]) -> None:
    assert doc["max_tokens_in_a_minute"] <= TPM, doc
    assert doc["credits_allowed"] <= CREDITS, doc
    assert doc["answers"].get("lease 200", 0) >= TPM // JOB_TOKENS and doc["credits_allowed"] > 0, doc


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["flushall", "restart-empty", "sigkill"])
def test_budgets_are_never_overspent_through_a_fault(
    fresh_fleet: Fleet, fresh_redis_server: RedisServer, fault: str
) -> None:
    instances = start(fresh_fleet)
    spend = Spend(instances)

    def inject() -> None:
        if fault == "flushall":
            fresh_redis_server.command("FLUSHALL")
        elif fault == "restart-empty":
            fresh_redis_server.restart(flush=True)
        else:
            instances[0].kill()

    asyncio.run(spend.run(10, inject, at=3))
    check(record(f"budgets-{fault}", spend))


@pytest.mark.timeout(120)
def test_budgets_are_never_overspent_through_a_failover(
    tmp_path: Path,
    pair: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = pair
    forwarder = Forwarder(primary.port)
    fleet = Fleet(tmp_path, forwarder.url)
    try:
        spend = Spend(start(fleet))

        def failover() -> None:
            primary.kill()
            replica.command("REPLICAOF", "NO", "ONE")
            forwarder.point(replica.port)

        asyncio.run(spend.run(10, failover, at=3))
        check(record("budgets-replica-promoted", spend))
    finally:
        fleet.close()
        forwarder.close()
