"""Scenario 4: jobs through the pods. A fixed job type keeps exactly its own slots under any load,
flexible types borrow idle slots and give them back as borrowed jobs end (no preemption, the owner
first), and all of it stays inside the pod: heavy load on one pod never changes another pod's
capacity. No job fails.

Two pods of :data:`MIXED` (24 at once over the fleet): each has 12 slots, ``interactive`` (fixed) 3,
``batch`` 6 and ``eval`` 3 (flexible).
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from tests.e2e.env import E2E, MIXED, FleetPolicies, planned, spec
from tests.e2e.record import ScenarioRecord

pytestmark = pytest.mark.e2e

HOLD_S = 4.0  # how long a batch job holds its slot: long enough to see borrowing and waiting


@pytest.mark.timeout(240)
def test_fixed_isolation_flexible_borrowing_and_local_ratios(
    e2e: E2E, policies: FleetPolicies, record: ScenarioRecord
) -> None:
    s = spec(MIXED, replicas=2)
    with e2e.watch(policies, "mixed", record) as watch:
        policies.apply("mixed", s)
        p1, p2 = watch.wait_agreed(2, planned(s, 2), timeout=120)
        baseline = watch.views()[p2.name].slots
        assert baseline == {
            "interactive": {"model-alpha": 3},
            "batch": {"model-alpha": 6},
            "eval": {"model-alpha": 3},
        }
        jobs = watch.jobs()
        started = time.time()

        record.step(f"12 batch jobs of {HOLD_S:g} s on {p1.name}")
        batch = [jobs.submit(p1, "batch", hold=HOLD_S) for _ in range(12)]

        def p1_batch() -> dict[str, object] | None:
            doc = watch.views()[p1.name].doc["jobTypes"]
            return doc if doc["batch"]["inFlight"] == 9 and doc["batch"]["waiting"] == 3 else None

        # Borrowing: batch runs its own 6 and eval's idle 3, never interactive's fixed 3.
        loaded = watch.wait("batch to borrow eval's idle slots on p1", p1_batch, timeout=10)
        assert loaded["batch"]["currentRatio"] == 0.75 and loaded["eval"]["currentRatio"] == 0
        assert loaded["interactive"]["currentRatio"] == 0.25 and loaded["interactive"]["inFlight"] == 0

        # Isolation: the fixed type gets its 3 slots at once while batch saturates the pod.
        record.step("3 interactive jobs on p1 under the batch load")
        interactive = [f.result(15) for f in [jobs.submit(p1, "interactive", hold=1.0) for _ in range(3)]]
        waited_interactive = [j.started - j.queued for j in interactive if j.started]

        # Ratios are local: p2 has its whole capacity, untouched by p1's load, and uses all of it.
        record.step("a full pod of jobs on p2 while p1 is loaded")
        p2_view = watch.views()[p2.name]
        assert p2_view.slots == baseline
        assert {j: v["currentRatio"] for j, v in p2_view.doc["jobTypes"].items()} == {
            "interactive": 0.25, "batch": 0.5, "eval": 0.25,
        }  # fmt: skip
        full = [jobs.submit(p2, t, hold=1.0) for t in ["batch"] * 6 + ["eval"] * 3 + ["interactive"] * 3]
        p2_jobs = [f.result(15) for f in full]
        waited_p2 = [j.started - j.queued for j in p2_jobs if j.started]

        # No preemption, owner first: eval on p1 waits for a borrowed batch job to end, then gets its
        # slots back before the batch jobs still waiting.
        record.step("3 eval jobs on p1: eval's slots are lent to batch")
        eval_jobs = [f.result(30) for f in [jobs.submit(p1, "eval", hold=0.5) for _ in range(3)]]
        batch_jobs = [f.result(30) for f in batch]

    first_batch_end = min(j.ended for j in batch_jobs if j.ended)
    queued_batch_start = sorted(j.started for j in batch_jobs if j.started)[9:]
    eval_starts = [j.started for j in eval_jobs if j.started]
    everything = [*batch_jobs, *interactive, *p2_jobs, *eval_jobs]
    peaks: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    totals: dict[str, int] = defaultdict(int)
    p2_slots = set()
    for sample in watch.samples:
        if sample.t < started:
            continue
        for j, n in sample.in_flight.items():
            peaks[sample.pod][j] = max(peaks[sample.pod][j], n)
        totals[sample.pod] = max(totals[sample.pod], sum(sample.in_flight.values()))
        if sample.pod == p2.name:
            p2_slots.add(sample.total_slots)
    record.figure("peak_in_flight", {pod: dict(v) for pod, v in peaks.items()})
    record.figure("interactive_wait_max_s", round(max(waited_interactive), 3))
    record.figure("p2_full_pod_wait_max_s", round(max(waited_p2), 3))
    record.figure("eval_wait_s", [round(j.started - j.queued, 3) for j in eval_jobs if j.started])
    record.figure(
        "jobs", len(everything),
        headline=f"{len(everything)} jobs, borrowed {sum(1 for j in batch_jobs if j.lease.get('borrowed'))}, "
        f"p1 peak {totals[p1.name]}/12",
    )  # fmt: skip

    assert [j.state for j in everything] == ["completed"] * len(everything), [j.error for j in everything]
    assert sum(1 for j in batch_jobs if j.lease.get("borrowed")) == 3
    assert max(waited_interactive) < 0.5, waited_interactive
    assert max(waited_p2) < 0.5, waited_p2
    assert min(eval_starts) >= first_batch_end - 0.25, "eval preempted a borrowed batch job"
    assert max(eval_starts) <= min(queued_batch_start) + 0.25, "queued batch jobs took eval's slots first"
    assert peaks[p1.name]["batch"] <= 9 and peaks[p1.name]["interactive"] <= 3 and totals[p1.name] <= 12
    assert totals[p2.name] <= 12 and p2_slots == {12}, p2_slots
