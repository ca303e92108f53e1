"""Scenario 7: the operator's pod deleted mid-run. The fleet keeps serving without it (the pods need
only Redis, never the operator); a policy edit made as soon as the old operator pod is gone, while
its replacement starts, is applied by the new operator, live, and no limiter pod is restarted or
replaced."""

from __future__ import annotations

import time

import pytest

from tests.e2e.env import E2E, MIXED, FleetPolicies, planned, spec
from tests.e2e.kube import is_ready
from tests.e2e.record import ScenarioRecord

pytestmark = pytest.mark.e2e


def more_interactive(s: dict[str, object]) -> None:
    """Ratios interactive 0.5, batch 0.25, eval 0.25 (per pod: 6, 3, 3)."""
    for job_type, ratio in zip(s["jobTypes"], (0.5, 0.25, 0.25), strict=True):  # type: ignore[call-overload]
        job_type["ratio"] = ratio


@pytest.mark.timeout(300)
def test_the_fleet_outlives_its_operator(e2e: E2E, policies: FleetPolicies, record: ScenarioRecord) -> None:
    s = spec(MIXED, replicas=2)
    new = spec(MIXED, replicas=2, change=more_interactive)
    with e2e.watch(policies, "mixed", record) as watch:
        policies.apply("mixed", s)
        pods = watch.wait_agreed(2, planned(s, 2), timeout=120)
        policies.wait_ready("mixed", timeout=60)
        before = policies.fingerprint("mixed")
        jobs = watch.jobs()
        targets = [(p.name, p.url) for p in pods]
        stream = jobs.start_stream(
            lambda: targets,
            ["interactive", "batch", "eval"],
            workers=12,
            hold=(0.2, 0.5),
            seconds=120,
            wait=60,
        )
        time.sleep(2)

        (operator,) = e2e.operator_pods()
        old = operator["metadata"]["name"]
        record.step(f"kubectl delete pod {old} (the operator)")
        deleted = time.time()
        e2e.cluster.kubectl("delete", "pod", old, "-n", e2e.namespace, "--wait=true", timeout=120)
        gone = time.time()
        record.event("operator.gone", pod=old)

        # The old operator is gone; the Deployment's replacement is starting: edit the policy.
        record.step("kubectl apply: new ratios, right after the old operator is gone")
        policies.apply("mixed", new)
        generation = policies.generation("mixed")
        completed_at_gap = jobs.counts()["completed"]

        def new_operator_ready() -> str | None:
            ops = [p for p in e2e.operator_pods() if p["metadata"]["name"] != old and is_ready(p)]
            return ops[0]["metadata"]["name"] if ops else None

        replacement = watch.wait("a new operator pod ready", new_operator_ready, timeout=120, interval=0.2)
        operator_ready = time.time()
        record.event("operator.ready", pod=replacement)
        watch.wait_agreed(2, planned(new, 2), timeout=60)
        live = time.time()
        assert all(v.generation == generation for v in watch.views().values())
        obj = policies.wait_ready("mixed", timeout=60)
        converged = time.time()
        time.sleep(1)
        jobs.stop_streams()
        stream.result(5)
        counts = jobs.counts()

    assert obj["status"]["observedGeneration"] == obj["status"]["projectedGeneration"] == generation
    assert obj["status"]["instanceCount"] == 2
    assert policies.fingerprint("mixed") == before, "limiter pods were restarted or replaced"
    served_without = sum(
        1 for j in jobs.jobs if j.state == "completed" and j.ended and deleted <= j.ended <= operator_ready
    )
    record.figure("operator_delete_s", round(gone - deleted, 3))
    record.figure("operator_gap_s", round(operator_ready - deleted, 3))
    record.figure("edit_to_live_s", round(live - gone, 3))
    record.figure("edit_to_status_ready_s", round(converged - gone, 3))
    record.figure(
        "jobs_served_without_operator", served_without,
        headline=f"{served_without} jobs while no operator ran ({operator_ready - deleted:.1f} s); "
        f"edit live {live - gone:.1f} s after",
    )  # fmt: skip
    assert completed_at_gap > 0 and served_without > 0
    assert set(counts) == {"completed"}, counts
