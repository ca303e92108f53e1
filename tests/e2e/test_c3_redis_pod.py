"""Container scenario (c): the in-chart Redis pod deleted under load (kind only, ``containers``).

The chart runs Redis with its append-only file on a PersistentVolumeClaim. A credit budget is set
for an API key of the policy (with the limiter's own credit store, as ``PUT /api/keys`` would: the
suite's pods have no admin token), and workers spend it through both limiter pods
(``POST /api/keys/{key}/consume``) while ``kubectl delete pod`` takes the Redis pod away. Its
Deployment starts a new pod on the same claim, which replays the file: the budget comes back with
everything spent before (never reset to its capacity, so nothing can be spent twice), the fleet
registers again and agrees, no limiter pod restarts, and the budget stays exact: what Redis counts
as spent is at least every consume the workers saw allowed, at most that plus the answers they lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import pytest

from limiter.core.credits import KeyState
from limiter.redis.creditstore import CreditStore
from tests.e2e.env import E2E, MIXED, FleetPolicies, planned, spec
from tests.e2e.kube import is_ready
from tests.e2e.record import ScenarioRecord

pytestmark = [pytest.mark.e2e, pytest.mark.containers]

CREDITS = 1_000_000
WORKERS = 6


def credit_store(e2e: E2E, namespace: str, name: str, call: str, *args: Any) -> Any:
    """One call of the limiter's credit store on the fleets' Redis (a store made for the call)."""

    async def go() -> Any:
        store = CreditStore.from_url(e2e.redis.url(), namespace, name)
        try:
            return await getattr(store, call)(*args)
        finally:
            await store.close()

    return asyncio.run(go())


def consume(url: str, cost: int) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps({"cost": cost}).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, dict(json.loads(body))
        except ValueError:
            return exc.code, {"body": body[:200].decode(errors="replace")}


class Spenders:
    """Threads spending 1 credit at a time through the pods' URLs, counting every outcome."""

    def __init__(self, urls: list[str], key: str) -> None:
        self.urls = [f"{u}/api/keys/{key}/consume" for u in urls]
        self.counts: Counter[str] = Counter()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(WORKERS)]

    def _run(self, i: int) -> None:
        n = i
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            url = self.urls[n % len(self.urls)]
            n += 1
            try:
                status, _ = consume(url, 1)
                outcome = {200: "allowed", 429: "refused"}.get(status, f"http {status}")
            except (urllib.error.URLError, OSError):
                outcome = "lost"  # no answer: the consume may or may not have been applied
            with self._lock:
                self.counts[outcome] += 1
            if outcome not in ("allowed", "refused"):
                time.sleep(0.1)

    def __enter__(self) -> Spenders:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)


@pytest.mark.timeout(360)
def test_redis_pod_deleted_under_load_keeps_credit_budgets(
    e2e: E2E, policies: FleetPolicies, record: ScenarioRecord
) -> None:
    s = spec(MIXED, replicas=2)
    key = f"e2e-{os.urandom(4).hex()}"
    ns = policies.namespace
    redis_selector = f"app.kubernetes.io/instance={e2e.release},app.kubernetes.io/component=redis"

    def redis_pods() -> list[dict[str, Any]]:
        out = e2e.cluster.kubectl("get", "pods", "-n", e2e.namespace, "-l", redis_selector, "-o", "json")
        return list(json.loads(out)["items"])

    with e2e.watch(policies, "mixed", record) as watch:
        policies.apply("mixed", s)
        pods = watch.wait_agreed(2, planned(s, 2), timeout=120)
        before = policies.fingerprint("mixed")
        state, created = credit_store(e2e, ns, "mixed", "put", key, CREDITS)
        assert created and state.remaining == CREDITS
        (old,) = redis_pods()
        claim = [
            v["persistentVolumeClaim"]["claimName"]
            for v in old["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claim, "the in-chart Redis has no PersistentVolumeClaim"

        with Spenders([e2e.access.url(p.pod) for p in pods], key) as spenders:
            record.step(f"load: {WORKERS} workers spending credits of {key} through both pods")
            time.sleep(5)
            at_delete = spenders.snapshot()
            assert at_delete["allowed"] > 0, at_delete
            record.step(f"kubectl delete pod {old['metadata']['name']} (Redis)")
            deleted = time.time()
            e2e.cluster.kubectl("delete", "pod", old["metadata"]["name"], "-n", e2e.namespace, "--wait=false")

            def new_redis_ready() -> dict[str, Any] | None:
                found = [
                    p
                    for p in redis_pods()
                    if p["metadata"]["uid"] != old["metadata"]["uid"]
                    and not p["metadata"].get("deletionTimestamp")
                    and is_ready(p)
                ]
                return found[0] if found else None

            new = watch.wait("the new Redis pod Ready", new_redis_ready, timeout=120, interval=0.25)
            redis_ready = time.time()
            back: KeyState = credit_store(e2e, ns, "mixed", "get", key)
            spent_when_back = CREDITS - back.remaining
            record.event("redis.back", pod=new["metadata"]["name"], remaining=back.remaining)
            watch.wait_agreed(2, planned(s, 2), timeout=60)
            agreed = time.time()
            time.sleep(5)  # more load on the new Redis
        counts = spenders.snapshot()
        final: KeyState = credit_store(e2e, ns, "mixed", "get", key)
        spent = CREDITS - final.remaining
        # The budget still refuses what it cannot pay, and pays exactly what is left.
        url = e2e.access.url(pods[0].pod) + f"/api/keys/{key}/consume"
        over = consume(url, final.remaining + 1)
        exact = consume(url, final.remaining)
        empty = consume(url, 1)
        heartbeats = watch.heartbeat_ages()

    record.figure("consumes", dict(counts))
    record.figure("allowed_before_delete", at_delete["allowed"])
    record.figure("spent_when_redis_back", spent_when_back)
    record.figure("spent_in_redis", spent)
    record.figure("delete_to_redis_ready_s", round(redis_ready - deleted, 3))
    record.figure(
        "redis_ready_to_fleet_agreed_s", round(agreed - redis_ready, 3),
        headline=f"{counts['allowed']} consumes allowed, Redis counts {spent} spent (lost answers "
        f"{counts['lost']}, 503 while Redis was away {counts['http 503']}); Redis back "
        f"{redis_ready - deleted:.1f} s after the delete with "
        f"{spent_when_back} spent, fleet agreed {agreed - redis_ready:.1f} s later",
    )  # fmt: skip
    assert all(age < 3 for age in heartbeats.values()), heartbeats
    # The append-only file brought the budget back: not reset, and with at least what was allowed
    # before the delete.
    assert spent_when_back >= at_delete["allowed"], (spent_when_back, at_delete)
    assert final.capacity == CREDITS
    # Exact: every allowed consume is counted; nothing beyond the allowed and the unanswered ones.
    lost = counts["lost"] + sum(v for k, v in counts.items() if k.startswith("http "))
    assert counts["allowed"] <= spent <= counts["allowed"] + lost, (spent, counts)
    assert over[0] == 429 and over[1]["allowed"] is False, over
    assert exact[0] == 200 and exact[1]["remaining"] == 0, exact
    assert empty[0] == 429, empty
    assert policies.fingerprint("mixed") == before, "a Redis pod deletion must not restart limiter pods"
