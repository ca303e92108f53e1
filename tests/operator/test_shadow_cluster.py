"""Shadow mode through the operator on the local control plane: status.shadow shows the modes of
the current generation and the would-be refusals the pods counted, and switching to enforce with
kubectl apply refuses again without restarting a pod."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.operator.support import Policies, wait_for
from tests.support.http import http

pytestmark = pytest.mark.cluster

SPEC: dict[str, Any] = {
    "mode": "shadow",
    "models": [{"name": "model-alpha", "limits": {"maxConcurrentRequests": 2}}],
    "jobTypes": [{"name": "A", "ratio": 1, "estimate": {"tokens": 100}}],
    "fleet": {"replicas": 1},
}


def acquire(pod: dict[str, Any]) -> tuple[int, Any]:
    url = f"http://{pod['status']['podIP']}:8080/api/jobs/acquire"
    status, doc, _ = http("POST", url, {"jobType": "A", "waitSeconds": 0})
    return status, doc


def shadow_column(policies: Policies) -> str:
    """The SHADOW column of `kubectl get rlp shadow -o wide`, read by the header's offsets (a
    column may be blank)."""
    header, row = policies.kubectl("get", "rlp", "shadow", "-o", "wide").stdout.splitlines()
    start = header.index("SHADOW")
    end = header.index("AGE")
    return row[start:end].strip()


@pytest.mark.timeout(150)
def test_status_shows_shadow_counts_and_enforce_applies_live(policies: Policies) -> None:
    policies.apply("shadow", SPEC)
    status = policies.wait_ready("shadow")["status"]
    assert status["shadow"] == {"mode": "shadow", "shadowModels": ["model-alpha"]}
    (pod,) = policies.wait_pods("shadow", 1)
    uid = pod["metadata"]["uid"]
    assert shadow_column(policies) == '["model-alpha"]'

    # Two slots; five leases at once: three of them are what enforcing would have refused.
    answers = [acquire(pod) for _ in range(5)]
    assert [s for s, _ in answers] == [200] * 5, answers
    counted = [{"reason": "parallel_limit", "count": 3}]
    shadow = wait_for(
        "status.shadow.wouldRefuse",
        lambda: (
            (s := policies.policy("shadow")["status"].get("shadow")) and s.get("wouldRefuse") == counted and s
        ),
        timeout=30,
    )
    assert shadow["mode"] == "shadow"

    # kubectl apply of mode enforce: the same pod refuses now; the totals stay in status.
    enforce = copy.deepcopy(SPEC)
    enforce["mode"] = "enforce"
    policies.apply("shadow", enforce)
    wait_for("the pod to enforce", lambda: policies.allocation(pod)["mode"] == "enforce", timeout=30)
    assert acquire(pod)[0] == 503  # five leases still hold the two slots
    status = policies.wait_ready("shadow")["status"]
    assert status["shadow"] == {"mode": "enforce", "wouldRefuse": counted}
    assert shadow_column(policies) in ("", "<none>")  # no model in shadow now
    (same,) = policies.wait_pods("shadow", 1)
    assert same["metadata"]["uid"] == uid and same["status"]["containerStatuses"][0]["restartCount"] == 0
    # A mode the CRD does not know is refused at apply time, naming the field.
    bad = policies.apply("shadow", {**SPEC, "mode": "dry-run"}, check=False)
    assert bad.returncode != 0 and "spec.mode" in bad.stderr and "shadow" in bad.stderr
