"""Scenario 1: one pod of a policy gets the whole capacity, and the cluster says so."""

from __future__ import annotations

import time

import pytest

from tests.e2e.env import E2E, TPM, FleetPolicies, planned, slots_of, spec
from tests.e2e.record import ScenarioRecord

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(180)
def test_one_pod_gets_the_whole_capacity(e2e: E2E, policies: FleetPolicies, record: ScenarioRecord) -> None:
    s = spec(TPM, replicas=1)
    with e2e.watch(policies, "tpm", record) as watch:
        record.step("kubectl apply: tpm, 1 replica")
        applied = time.time()
        policies.apply("tpm", s)
        (pod,) = watch.wait_agreed(1, planned(s, 1), timeout=120)
        agreed = time.time()

        doc = watch.views()[pod.name].doc
        assert doc["instanceId"] == pod.name
        assert doc["allocation"]["instanceCount"] == 1
        assert slots_of(doc, "A") == 10  # 100K TPM / 10K tokens, all of it on the one pod
        assert doc["allocation"]["pools"]["model-alpha"] == {
            "totalSlots": 10, "tokensPerMinute": 100000, "requestsPerMinute": None,
            "tokensPerDay": None, "requestsPerDay": None,
        }  # fmt: skip

        obj = policies.wait_ready("tpm", timeout=60)
        assert obj["status"]["instanceCount"] == 1
        assert obj["status"]["pools"] == [
            {"name": "model-alpha", "totalSlots": 10, "tokensPerMinute": 100000}
        ]
        row = policies.get_rlp_row("tpm")
        assert (row["NAME"], row["MODELS"], row["REPLICAS"], row["INSTANCES"], row["READY"]) == (
            "tpm", "model-alpha", "1", "1", "True",
        )  # fmt: skip

        # A job through the pod, released with less than it reserved.
        jobs = watch.jobs()
        job = jobs.submit(pod, "A", hold=0.2, tokens=8200).result(30)
        assert job.state == "completed", job.error
        assert job.lease["model"] == "model-alpha" and job.lease["reserved"]["tokens"] == 10000

    assert pod.ready_seen is not None
    record.figure("apply_to_ready_s", round(pod.ready_seen - applied, 3))
    record.figure(
        "apply_to_agreed_s", round(agreed - applied, 3), headline=f"1 pod ready in {agreed - applied:.1f} s"
    )
