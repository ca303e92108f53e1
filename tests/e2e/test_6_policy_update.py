"""Scenario 6: a policy update under load. The pods apply the new generation live (no restart), every
admitted job is released normally (none lost), no job fails, and no pod ever runs more than its
share: 12 at once before the update, 5 once it has drained to the new limit (nothing in flight is
cancelled when slots shrink: new work waits until the pod is under its new share, checked per group:
the fixed type alone, the flexible types together).

Per pod, before: 12 at once, interactive 3, batch 6, eval 3. After: a share of 6, in 5 slots,
interactive 3, batch 1, eval 1 (the floors of the SPEC's arithmetic leave one unused).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.env import E2E, MIXED, FleetPolicies, planned, spec
from tests.e2e.record import ScenarioRecord

pytestmark = pytest.mark.e2e


def halve(s: dict[str, object]) -> None:
    """maxConcurrentRequests 24 -> 12, and new ratios: interactive 0.5, batch 0.25, eval 0.25."""
    s["models"][0]["limits"]["maxConcurrentRequests"] = 12  # type: ignore[index]
    for job_type, ratio in zip(s["jobTypes"], (0.5, 0.25, 0.25), strict=True):  # type: ignore[call-overload]
        job_type["ratio"] = ratio


def total_slots(plan: dict[str, Any]) -> int:
    """A pod's slots over every job type and model."""
    return sum(m["slots"] for models in plan["slotsByJobTypeAndModel"].values() for m in models.values())


def group_slots(s: dict[str, Any], plan: dict[str, Any]) -> dict[str, tuple[set[str], int]]:
    """A pod's slots by group: each fixed job type alone, the flexible types together."""
    per_type = {
        j: sum(m["slots"] for m in models.values()) for j, models in plan["slotsByJobTypeAndModel"].items()
    }
    out: dict[str, tuple[set[str], int]] = {}
    for jt in s["jobTypes"]:
        group = "flexible" if jt.get("flexible", True) else jt["name"]
        types, slots = out.get(group, (set(), 0))
        out[group] = (types | {jt["name"]}, slots + per_type.get(jt["name"], 0))
    return out


@pytest.mark.timeout(240)
def test_a_policy_update_applies_live_under_load(
    e2e: E2E, policies: FleetPolicies, record: ScenarioRecord
) -> None:
    s = spec(MIXED, replicas=2)
    new = spec(MIXED, replicas=2, change=halve)
    with e2e.watch(policies, "mixed", record) as watch:
        policies.apply("mixed", s)
        pods = watch.wait_agreed(2, planned(s, 2), timeout=120)
        before = policies.fingerprint("mixed")
        old_generation = policies.generation("mixed")
        jobs = watch.jobs()
        targets = [(p.name, p.url) for p in pods]
        record.step("load: 24 workers over both pods")
        stream = jobs.start_stream(
            lambda: targets,
            ["interactive", "batch", "eval"],
            workers=24,
            hold=(0.2, 0.6),
            seconds=60,
            wait=60,
        )
        time.sleep(3)

        record.step("kubectl apply: maxConcurrentRequests 24 -> 12, new ratios")
        applied = time.time()
        policies.apply("mixed", new)
        generation = policies.generation("mixed")
        assert generation > old_generation
        live = watch.wait(
            "both pods on the new generation",
            lambda: (
                (v := watch.views()) and all(v[p.name].generation == generation for p in pods) and time.time()
            ),
            timeout=30,
        )
        watch.wait_agreed(2, planned(new, 2), timeout=30)
        time.sleep(4)
        record.step("load stops")
        jobs.stop_streams()
        stream.result(5)
        counts = jobs.counts()

    assert policies.fingerprint("mixed") == before, "pods were replaced or restarted"
    record.figure("apply_to_live_s", round(live - applied, 3))
    # Per pod: never more than its slots in flight. After the pod took the new generation, each
    # group (the fixed type; the flexible pool, which lends within itself) drains to its new slots
    # and, once there, never goes above them again. By group, not by the pod's sum: a fixed lease
    # ending can dip the sum to the new total while old flexible leases still run, and the fixed
    # type taking its own slot back then is no overrun.
    old_plan, new_plan = planned(s, 2), planned(new, 2)
    old_slots, new_slots = total_slots(old_plan), total_slots(new_plan)
    assert (old_slots, new_slots) == (12, 5)
    bounds = group_slots(new, new_plan)
    assert bounds == {"interactive": ({"interactive"}, 3), "flexible": ({"batch", "eval"}, 2)}
    drained: dict[str, dict[str, float]] = {}
    for pod in (p.name for p in pods):
        samples = [x for x in watch.samples if x.pod == pod]
        assert max(sum(x.in_flight.values()) for x in samples) <= old_slots
        after = [x for x in samples if x.generation == generation]
        assert all(x.total_slots == new_slots for x in after), (
            "a pod reported the new generation with old slots"
        )
        drained[pod] = {}
        for group, (types, slots) in bounds.items():
            busy = [sum(x.in_flight.get(j, 0) for j in types) for x in after]
            first_ok = next(i for i, n in enumerate(busy) if n <= slots)
            drained[pod][group] = round(after[first_ok].t - after[0].t, 3)
            over = [(x, n) for x, n in zip(after[first_ok:], busy[first_ok:], strict=True) if n > slots]
            assert not over, (
                f"{pod}: {group} ran {over[0][1]} at once after draining to {slots} ({over[0][0].in_flight})"
            )
    record.figure("drained_to_new_share_s", drained)
    record.figure(
        "jobs", dict(counts),
        headline=f"{counts['completed']} jobs, live in {live - applied:.2f} s after apply, none failed",
    )  # fmt: skip
    assert counts["completed"] > 50 and set(counts) == {"completed"}, counts
