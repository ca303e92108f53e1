"""What must not change and what must heal: an operator restart, a Redis outage, a second operator replica."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.cluster.conftest import Cluster
from tests.operator.conftest import STATUS_INTERVAL, Release, operator_log, operator_pods
from tests.operator.support import Policies, wait_for
from tests.operator.test_fleet import fingerprint, tpm
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.cluster

OWNED = ("deployment", "service", "poddisruptionbudget", "serviceaccount")


def snapshot(policies: Policies, name: str) -> dict[str, Any]:
    """Everything a restart must leave alone: resourceVersions, the status, pods, Redis, events."""
    obj = policies.policy(name)
    versions = {"rlp": obj["metadata"]["resourceVersion"]}
    for kind in OWNED:
        child = policies.get(kind, f"{name}-limiter")
        assert child is not None
        versions[kind] = child["metadata"]["resourceVersion"]
    events = json.loads(
        policies.kubectl(
            "get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json"
        ).stdout
    )["items"]
    return {
        "versions": versions,
        "status": obj["status"],
        "pods": fingerprint(policies.pods(name)),
        "redis": policies.redis_policy(name),
        "events": sorted((e["reason"], e["message"], e.get("count", 1)) for e in events),
    }


def stable_snapshot(policies: Policies, name: str) -> dict[str, Any]:
    """A snapshot that stays the same over a few timer intervals (the fleet has settled)."""

    def settled() -> dict[str, Any] | None:
        first = snapshot(policies, name)
        time.sleep(3 * STATUS_INTERVAL)
        return first if snapshot(policies, name) == first else None

    return dict(wait_for(f"{name} to settle", settled, timeout=60, interval=0))


def restart_operator(cluster: Cluster, release: Release) -> str:
    """Delete the operator pod; return the name of its replacement once it has resumed the policies."""
    (old,) = operator_pods(cluster, release)
    cluster.kubectl(
        "delete", "pod", old["metadata"]["name"], "-n", release.namespace, "--wait=true", timeout=90
    )

    def resumed() -> str | None:
        pods = operator_pods(cluster, release)
        if len(pods) != 1 or pods[0]["metadata"]["name"] == old["metadata"]["name"]:
            return None
        name = pods[0]["metadata"]["name"]
        return name if "Resuming is processed" in operator_log(cluster, release, name) else None

    return str(wait_for("the new operator pod to resume", resumed, timeout=60))


@pytest.mark.timeout(180)
def test_restarting_the_operator_writes_nothing(
    cluster: Cluster, release: Release, policies: Policies
) -> None:
    spec = tpm(replicas=2)
    policies.apply("tpm", spec)
    policies.wait_ready("tpm")
    policies.wait_allocations("tpm", spec, 2)
    invalid = tpm(replicas=1)
    invalid["jobTypes"][0]["ratio"] = 0.9
    policies.apply("bad", invalid)
    policies.wait_condition("bad", "Ready", "False", "InvalidPolicy")
    before = stable_snapshot(policies, "tpm")
    bad_before = policies.policy("bad")

    new_pod = restart_operator(cluster, release)
    time.sleep(4 * STATUS_INTERVAL)  # several timer ticks of the new operator

    assert snapshot(policies, "tpm") == before
    bad_after = policies.policy("bad")
    assert bad_after["metadata"]["resourceVersion"] == bad_before["metadata"]["resourceVersion"]
    log = operator_log(cluster, release, new_pod)
    assert f"[{policies.namespace}/tpm] Handler 'reconcile' succeeded" in log
    for word in ("created", "updated", "projected"):
        assert f"[{policies.namespace}/tpm] {word}" not in log.replace("Projected", "projected"), log


@pytest.mark.timeout(180)
def test_a_redis_outage_shows_in_status_and_heals(policies: Policies) -> None:
    # This policy's own Redis, named by a Secret (spec.redis.secretRef), so it can go down alone.
    with RedisServer() as server:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "redis", "namespace": policies.namespace},
            "stringData": {"url": server.url},
        }
        policies.kubectl("apply", "-f", "-", input=json.dumps(secret))
        spec = tpm(replicas=2, redis={"secretRef": {"name": "redis", "key": "url"}})
        policies.apply("tpm", spec)
        policies.wait_ready("tpm")
        pods = fingerprint(policies.wait_allocations("tpm", spec, 2))
        (pod,) = policies.pods("tpm")[:1]
        env = {e["name"]: e.get("valueFrom") for e in pod["spec"]["containers"][0]["env"]}
        assert env["FLEET_LIMITER_REDIS_URL"] == {"secretKeyRef": {"name": "redis", "key": "url"}}
        assert policies.redis_keys("tpm", server.url) and policies.redis_keys("tpm") == []

        server.stop()
        obj = policies.wait_condition("tpm", "RedisUnavailable", "True", "Unreachable", timeout=20)
        ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "RedisUnavailable")
        assert f"127.0.0.1:{server.port}" in ready["message"]
        assert "instanceCount" not in obj["status"]
        row = policies.kubectl("get", "rlp", "tpm").stdout.splitlines()[1].split()
        assert "False" in row and "True" not in row

        server.start()  # same port, empty: the pods register again and the policy is projected again
        obj = policies.wait_ready("tpm", timeout=60)
        assert obj["status"]["instanceCount"] == 2
        assert policies.redis_policy("tpm", server.url)[0] == obj["metadata"]["generation"]
        policies.wait_allocations("tpm", spec, 2)
        assert fingerprint(policies.pods("tpm")) == pods, "a Redis outage must not restart pods"
        policies.kubectl("delete", "rlp", "tpm", "--wait=true", "--timeout=60s")
        assert policies.redis_keys("tpm", server.url) == []


@pytest.mark.timeout(180)
def test_two_operator_replicas_never_both_act(cluster: Cluster, release: Release, policies: Policies) -> None:
    deployment = f"deployment/{release.name}-fleet-limiter-operator"
    cluster.kubectl("scale", deployment, "-n", release.namespace, "--replicas=2")
    try:
        pods = wait_for(
            "two operator pods",
            lambda: len(operator_pods(cluster, release)) == 2 and operator_pods(cluster, release),
            60,
        )
        names = {p["metadata"]["name"] for p in pods}

        def peers() -> dict[str, int] | None:
            obj = json.loads(
                cluster.kubectl("get", "clusterkopfpeering", f"{release.name}-fleet-limiter", "-o", "json")
            )
            found = {name: int(peer["priority"]) for name, peer in (obj.get("status") or {}).items() if peer}
            return found if set(found) == names else None

        # Both announce themselves (kopf's identity is the pod name); the highest priority acts.
        priorities = wait_for("both replicas in the peering object", peers, 30)
        active, standby = sorted(names, key=priorities.__getitem__, reverse=True)
        assert priorities[active] != priorities[standby]

        policies.apply("tpm", tpm(replicas=1))
        policies.wait_ready("tpm")
        marker = f"[{policies.namespace}/tpm]"
        assert marker in operator_log(cluster, release, active)
        assert marker not in operator_log(cluster, release, standby)

        # The active replica goes; scaling down at once removes its fresh replacement (the newest,
        # not ready pod goes first), so the standby is the one left: it takes over.
        resumes = operator_log(cluster, release, standby).count("Resuming operations after the pause")
        cluster.kubectl("delete", "pod", active, "-n", release.namespace, "--wait=true", timeout=90)
        cluster.kubectl("scale", deployment, "-n", release.namespace, "--replicas=1")
        wait_for(
            "the standby to resume",
            lambda: (
                operator_log(cluster, release, standby).count("Resuming operations after the pause") > resumes
            ),
            timeout=90,
        )
        wait_for(
            "only the standby left",
            lambda: [p["metadata"]["name"] for p in operator_pods(cluster, release)] == [standby],
            60,
        )
        policies.apply("tpm", tpm(replicas=2))
        policies.wait_ready("tpm", timeout=60)
        assert f"{marker} Updating is processed" in operator_log(cluster, release, standby)
    finally:
        cluster.kubectl("scale", deployment, "-n", release.namespace, "--replicas=1")
        wait_for("one operator pod", lambda: len(operator_pods(cluster, release)) == 1, 90)
