"""A RateLimitPolicy in a real cluster: its fleet, updates, scaling, bad edits, deletion.

Every test applies policies with kubectl as a user would, to the operator installed by `helm install`
(tests/operator/conftest.py), and checks what the API server, the pods and Redis say.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
import yaml

from limiter.redis.creditstore import CreditStore
from tests.operator.conftest import ROOT
from tests.operator.support import Policies, plan, wait_for

pytestmark = pytest.mark.cluster

EXAMPLE = yaml.safe_load((ROOT / "examples" / "tpm.yaml").read_text())["spec"]


def tpm(replicas: int = 2, **changes: Any) -> dict[str, Any]:
    """examples/tpm.yaml (100K TPM; A 10K tokens at 0.6, B 5K at 0.4) with ``replicas`` pods."""
    spec = copy.deepcopy(EXAMPLE)
    spec["fleet"] = {"replicas": replicas}
    spec.update(changes)
    return spec


def fingerprint(pods: list[dict[str, Any]]) -> dict[str, int]:
    """Pod uid -> restart count: equal fingerprints mean no pod was replaced or restarted."""
    return {p["metadata"]["uid"]: p["status"]["containerStatuses"][0]["restartCount"] for p in pods}


@pytest.mark.timeout(120)
def test_a_policy_gets_an_owned_fleet_that_holds_the_plan(policies: Policies) -> None:
    spec = tpm(replicas=2)
    policies.apply("tpm", spec)
    obj = policies.wait_ready("tpm")

    uid = obj["metadata"]["uid"]
    for kind in ("deployment", "service", "poddisruptionbudget", "serviceaccount"):
        child = policies.get(kind, "tpm-limiter")
        assert child is not None, f"no {kind} tpm-limiter"
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "RateLimitPolicy", "tpm", uid, True,
        )  # fmt: skip
        assert child["metadata"]["labels"]["fleetlimiter.io/policy"] == "tpm"

    pods = policies.wait_allocations("tpm", spec, 2)
    expected = plan(spec, 2)
    assert expected["slotsByJobTypeAndModel"]["A"]["model-alpha"]["slots"] == 3  # SPEC section 3's example
    assert expected["slotsByJobTypeAndModel"]["B"]["model-alpha"]["slots"] == 4
    assert sorted(policies.allocation(p)["instanceId"] for p in pods) == sorted(
        p["metadata"]["name"] for p in pods
    )

    status = policies.policy("tpm")["status"]
    assert (status["instanceCount"], status["readyReplicas"], status["replicas"]) == (2, 2, 2)
    assert status["projectedGeneration"] == status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["pools"] == [{"name": "model-alpha", "totalSlots": 6, "tokensPerMinute": 50000}]
    assert status["models"] == "model-alpha"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {
        "Ready": "True",
        "Projected": "True",
        "Degraded": "False",
        "RedisUnavailable": "False",
    }
    assert policies.redis_policy("tpm")[0] == obj["metadata"]["generation"]


@pytest.mark.timeout(120)
def test_limiter_pods_run_serve_as_specified(policies: Policies) -> None:
    policies.apply("tpm", tpm(replicas=1))
    (pod,) = policies.wait_pods("tpm", 1)
    spec = pod["spec"]
    (c,) = spec["containers"]
    assert c["command"] == ["fleet-limiter", "serve", "--namespace", policies.namespace, "--name", "tpm"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["FLEET_LIMITER_REDIS_URL"] == policies.redis_url
    assert env["POD_IP"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}
    assert env["POD_NAME"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert spec["terminationGracePeriodSeconds"] == 10  # the chart value the tests install with
    assert spec["serviceAccountName"] == "tpm-limiter" and spec["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.timeout(120)
def test_kubectl_get_and_explain_show_what_an_admin_needs(policies: Policies) -> None:
    policies.apply("tpm", tpm(replicas=2))
    policies.wait_ready("tpm")
    header, row = policies.kubectl("get", "rlp").stdout.splitlines()
    assert header.split() == ["NAME", "MODELS", "REPLICAS", "INSTANCES", "READY", "AGE"]
    assert row.split()[:5] == ["tpm", "model-alpha", "2", "2", "True"]
    wide_header = policies.kubectl("get", "rlp", "-o", "wide").stdout.splitlines()[0].split()
    assert wide_header == [
        "NAME", "MODELS", "REPLICAS", "INSTANCES", "READY", "REASON", "GENERATION", "SHADOW", "AGE",
    ]  # fmt: skip
    explained = policies.kubectl("explain", "rlp.spec.jobTypes.ratio").stdout
    assert "Share of every model's capacity" in explained
    assert "FleetReady" in policies.kubectl("describe", "rlp", "tpm").stdout


@pytest.mark.timeout(120)
def test_a_new_limit_and_ratio_apply_live_without_restarting_pods(policies: Policies) -> None:
    spec = tpm(replicas=2)
    policies.apply("tpm", spec)
    policies.wait_ready("tpm")
    before = fingerprint(policies.wait_allocations("tpm", spec, 2))

    changed = copy.deepcopy(spec)
    changed["models"][0]["limits"]["tokensPerMinute"] = 200000
    changed["jobTypes"][0]["ratio"], changed["jobTypes"][1]["ratio"] = 0.3, 0.7
    policies.apply("tpm", changed)
    generation = policies.policy("tpm")["metadata"]["generation"]
    # Every pod holds the new plan within a few seconds: 200K TPM, A 0.3 -> 3 slots, B 0.7 -> 14.
    pods = policies.wait_allocations("tpm", changed, 2, timeout=5)
    assert {policies.allocation(p)["generation"] for p in pods} == {generation}
    assert policies.allocation(pods[0])["slotsByJobTypeAndModel"]["B"]["model-alpha"]["slots"] == 14
    assert fingerprint(policies.wait_pods("tpm", 2)) == before, "pods were replaced or restarted"
    status = policies.wait_ready("tpm")["status"]
    assert status["projectedGeneration"] == generation


@pytest.mark.timeout(180)
def test_pods_and_slots_follow_replicas(policies: Policies) -> None:
    spec = tpm(replicas=2)
    policies.apply("tpm", spec)
    policies.wait_ready("tpm")
    for replicas in (3, 1):
        spec = tpm(replicas=replicas)
        policies.apply("tpm", spec)
        policies.wait_allocations("tpm", spec, replicas, timeout=60)
        status = policies.wait_ready("tpm")["status"]
        assert (status["replicas"], status["readyReplicas"], status["instanceCount"]) == (replicas,) * 3
        slots = plan(spec, replicas)["allocation"]["pools"]["model-alpha"]["totalSlots"]
        assert status["pools"][0]["totalSlots"] == slots


@pytest.mark.timeout(120)
def test_a_deployment_changed_by_hand_is_put_back(policies: Policies) -> None:
    policies.apply("tpm", tpm(replicas=1))
    policies.wait_ready("tpm")
    policies.kubectl("scale", "deployment/tpm-limiter", "--replicas=3")

    def replicas() -> int | None:
        deployment = policies.get("deployment", "tpm-limiter")
        return deployment["spec"]["replicas"] if deployment else None

    wait_for("the Deployment scaled by hand", lambda: replicas() == 3, 10)
    wait_for("the Deployment back at 1 replica", lambda: replicas() == 1, 20)
    policies.wait_pods("tpm", 1)
    policies.kubectl("delete", "deployment/tpm-limiter", "--wait=true")
    wait_for("the Deployment re-created", lambda: policies.get("deployment", "tpm-limiter"), 20)
    policies.wait_ready("tpm")


#: Rules only the model can check: each breaks one, the message names the field.
OPERATOR_REJECTS: list[tuple[str, Any, str]] = [
    ("ratios-sum", lambda s: s["jobTypes"][0].update(ratio=0.7), "spec.jobTypes[*].ratio: ratios sum to 1.1"),
    ("unknown-model", lambda s: s["jobTypes"][0].update(models=["model-zeta"]),
     "spec.jobTypes[0].models[0]: unknown model 'model-zeta'"),
    ("no-estimate", lambda s: s["jobTypes"][1].update(estimate={"requests": 1}),
     "spec.jobTypes[1].estimate.tokens"),
    ("default-job-type", lambda s: s.update(defaultJobType="C"), "spec.defaultJobType: unknown job type 'C'"),
    ("timeouts", lambda s: s.update(instance={"heartbeatSeconds": 5, "instanceTimeoutSeconds": 5}),
     "instanceTimeoutSeconds: 5 must be greater than heartbeatSeconds"),
    ("model-twice", lambda s: s["jobTypes"][0].update(models=["model-alpha", "model-alpha"]),
     "spec.jobTypes[0].models[1].name: duplicate name 'model-alpha'"),
]  # fmt: skip

#: What the CRD schema refuses at apply time (kubectl's strict field validation included).
SCHEMA_REJECTS: list[tuple[str, Any, str]] = [
    ("unknown-field", lambda s: s["models"][0]["limits"].update(tokensPerHour=5),
     'unknown field "spec.models[0].limits.tokensPerHour"'),
    ("ratio-above-1", lambda s: s["jobTypes"][0].update(ratio=1.5), "should be less than or equal to 1"),
    ("ratio-zero", lambda s: s["jobTypes"][0].update(ratio=0), "should be greater than 0"),
    ("negative-estimate", lambda s: s["jobTypes"][0].update(estimate={"tokens": -1}),
     "should be greater than or equal to 0"),
    ("duplicate-models", lambda s: s["models"].append(copy.deepcopy(s["models"][0])), "Duplicate value"),
    ("no-job-types", lambda s: s.pop("jobTypes"), "spec.jobTypes: Required value"),
    ("no-limit", lambda s: s["models"][0].update(limits={}), "should have at least 1 properties"),
    ("replicas-type", lambda s: s.update(fleet={"replicas": "two"}), "must be of type integer"),
    ("replicas-max", lambda s: s.update(fleet={"replicas": 5000}), "should be less than or equal to 1000"),
    ("protocol", lambda s: s["models"][0].update(upstream={"url": "http://x:1", "protocol": "grpc"}),
     "Unsupported value"),
    ("redis-url", lambda s: s.update(redis={"url": "http://redis:6379"}), "should match"),
]  # fmt: skip


@pytest.mark.timeout(240)
def test_invalid_edits_are_refused_and_the_fleet_keeps_running(policies: Policies) -> None:
    spec = tpm(replicas=2)
    policies.apply("tpm", spec)
    good = policies.wait_ready("tpm")
    good_generation = good["metadata"]["generation"]
    pods = fingerprint(policies.wait_allocations("tpm", spec, 2))
    deployment_generation = policies.get("deployment", "tpm-limiter")["metadata"]["generation"]  # type: ignore[index]

    for name, change, message in SCHEMA_REJECTS:
        bad = copy.deepcopy(spec)
        change(bad)
        out = policies.apply("tpm", bad, check=False)
        assert out.returncode != 0, f"{name}: the API server accepted it"
        assert message in out.stderr, f"{name}: {out.stderr}"
    assert policies.policy("tpm")["metadata"]["generation"] == good_generation

    for name, change, message in OPERATOR_REJECTS:
        bad = copy.deepcopy(spec)
        change(bad)
        policies.apply("tpm", bad)
        obj = policies.wait_condition("tpm", "Ready", "False", "InvalidPolicy", timeout=15)
        ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        assert message in ready["message"], f"{name}: {ready['message']}"
        assert f"the fleet keeps generation {good_generation}" in ready["message"]
        projected = next(c for c in obj["status"]["conditions"] if c["type"] == "Projected")
        assert (projected["status"], projected["reason"]) == ("False", "InvalidPolicy")
        assert obj["status"]["projectedGeneration"] == good_generation
        assert policies.redis_policy("tpm")[0] == good_generation, f"{name} reached Redis"
    events = policies.kubectl(
        "get", "events", "--field-selector", "involvedObject.name=tpm,reason=InvalidPolicy"
    ).stdout
    assert "ratios sum to 1.1" in events

    # The previous generation's fleet never moved, and still holds its plan.
    assert fingerprint(policies.wait_allocations("tpm", spec, 2)) == pods
    deployment = policies.get("deployment", "tpm-limiter")
    assert deployment is not None and deployment["metadata"]["generation"] == deployment_generation

    policies.apply("tpm", tpm(replicas=2, defaultJobType="B"))
    obj = policies.wait_ready("tpm")
    assert policies.redis_policy("tpm")[0] == obj["metadata"]["generation"]


@pytest.mark.timeout(120)
def test_a_new_invalid_policy_gets_no_fleet(policies: Policies) -> None:
    bad = tpm(replicas=2)
    bad["jobTypes"][0]["models"] = ["model-zeta"]
    policies.apply("broken", bad)
    obj = policies.wait_condition("broken", "Ready", "False", "InvalidPolicy", timeout=20)
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert "nothing is projected" in ready["message"] and "unknown model 'model-zeta'" in ready["message"]
    assert "projectedGeneration" not in obj["status"] and obj["status"]["models"] == "model-alpha"
    assert policies.get("deployment", "broken-limiter") is None
    assert policies.redis_keys("broken") == []


@pytest.mark.timeout(120)
async def _put_credit_key(url: str, namespace: str, name: str) -> None:
    store = CreditStore.from_url(url, namespace, name)
    try:
        await store.put("a-team-credit-key", 100)
    finally:
        await store.close()


def test_deleting_a_policy_removes_its_fleet_and_its_redis_keys(policies: Policies) -> None:
    policies.apply("tpm", tpm(replicas=2))
    obj = policies.wait_ready("tpm")
    assert obj["metadata"]["finalizers"] == ["fleetlimiter.io/finalizer"]
    # A credit budget of the policy goes with it too.
    asyncio.run(_put_credit_key(policies.redis_url, policies.namespace, "tpm"))
    keys = policies.redis_keys("tpm")
    assert f"fl:{{{policies.namespace}/tpm}}:policy" in keys
    assert any(":credits" in k for k in keys), keys

    policies.kubectl("delete", "rlp", "tpm", "--wait=true", "--timeout=60s")
    assert policies.get("rlp", "tpm") is None  # the finalizer was cleared
    for kind in ("deployment", "service", "poddisruptionbudget", "serviceaccount"):
        wait_for(
            f"{kind} tpm-limiter to be collected", lambda k=kind: policies.get(k, "tpm-limiter") is None, 30
        )
    policies.wait_pods("tpm", 0, timeout=30)
    assert policies.redis_keys("tpm") == []
