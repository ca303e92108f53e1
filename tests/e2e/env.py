"""The e2e suite's installation: the chart installed with Helm, its Redis, namespaces of policies,
and the example policies the scenarios use."""

from __future__ import annotations

import copy
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.cluster.conftest import Cluster
from tests.e2e.kube import (
    CHART,
    E2E_LABEL,
    PodAccess,
    RedisAccess,
    Settings,
    chart_values,
    container_pid,
    run,
)
from tests.e2e.observe import FleetWatch
from tests.e2e.record import ScenarioRecord
from tests.operator.support import Policies, plan, uninstall_release, wait_for


@dataclass
class E2E:
    """The cluster, the chart installed on it, and how the suite reaches pods and Redis."""

    settings: Settings
    cluster: Cluster
    helm: Path
    access: PodAccess
    redis: RedisAccess
    release: str
    namespace: str
    namespaces: list[str] = field(default_factory=list)

    @property
    def operator_selector(self) -> str:
        return f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=operator"

    def operator_pods(self) -> list[dict[str, Any]]:
        """The release's operator pods that are not being deleted."""
        out = self.cluster.kubectl(
            "get", "pods", "-n", self.namespace, "-l", self.operator_selector, "-o", "json"
        )
        return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]

    def operator_log(self, pod: str) -> str:
        return self.cluster.kubectl("logs", pod, "-n", self.namespace, check=False)

    def redis_client(self) -> redis.Redis:
        """A client of the fleets' Redis for the test's thread (close it)."""
        return redis.Redis.from_url(self.redis.url(), socket_timeout=5)

    def watch(self, policies: FleetPolicies, name: str, record: ScenarioRecord, **kwargs: Any) -> FleetWatch:
        """A :class:`FleetWatch` of one policy (use it as a context manager)."""
        return FleetWatch(self, policies.namespace, name, record, **kwargs)


class FleetPolicies(Policies):
    """tests/operator's helpers for the policies of one namespace, with pods reached through the
    suite's :class:`PodAccess` (directly or through port-forward)."""

    def __init__(self, env: E2E, namespace: str) -> None:
        super().__init__(env.cluster, namespace, env.redis.chart_url or "")
        self.env = env

    def allocation(self, pod: dict[str, Any]) -> dict[str, Any]:
        url = self.env.access.url(pod) + "/api/debug/allocation"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.loads(resp.read()))

    def redis_keys(self, name: str, url: str | None = None) -> list[str]:
        return super().redis_keys(name, url or self.env.redis.url())

    def redis_policy(self, name: str, url: str | None = None) -> tuple[int | None, int | None]:
        return super().redis_policy(name, url or self.env.redis.url())

    def generation(self, name: str) -> int:
        return int(self.policy(name)["metadata"]["generation"])

    def fingerprint(self, name: str) -> dict[str, int]:
        """Pod uid -> restart count: the same fingerprint later means no pod was replaced or restarted."""
        return {
            p["metadata"]["uid"]: sum(
                c.get("restartCount", 0) for c in p["status"].get("containerStatuses") or []
            )
            for p in self.pods(name)
        }

    def get_rlp_row(self, name: str) -> dict[str, str]:
        """``kubectl get rlp NAME`` as a dict of its columns (cut where the header's columns start, since
        a column may be empty: INSTANCES while Redis is unreachable)."""
        header, row = self.kubectl("get", "rlp", name).stdout.splitlines()[:2]
        starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
        bounds = [*starts[1:], None]
        return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, bounds, strict=True)}

    def status_condition(self, name: str, kind: str) -> dict[str, Any]:
        for c in (self.policy(name).get("status") or {}).get("conditions") or []:
            if c["type"] == kind:
                return dict(c)
        return {}

    def pids(self, name: str) -> list[int]:
        """Process ids of the policy's pod containers on the local node."""
        return [pid for pid in (container_pid(p) for p in self.pods(name)) if pid]


# -- install -------------------------------------------------------------------------------------------


def create_namespace(cluster: Cluster, name: str, role: str) -> None:
    """A namespace labelled as the suite's (``role``: release or policies)."""
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, f"{E2E_LABEL}={role}")


def install(
    cluster: Cluster, helm: Path, settings: Settings, release: str, namespace: str, redis_url: str | None
) -> None:
    """``helm install`` of charts/fleet-limiter; CRDs of an earlier install are brought up to date first
    (helm installs crds/ only when absent)."""
    if cluster.kubectl("get", "crd", "ratelimitpolicies.fleetlimiter.io", check=False):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    proc = run(
        [
            str(helm), "install", release, str(CHART), "-n", namespace, f"--kubeconfig={cluster.kubeconfig}",
            *chart_values(settings, redis_url), "--wait", "--timeout", "180s",
        ],
        check=False, timeout=200,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"helm install failed:\n{proc.stdout}{proc.stderr}")


def uninstall(cluster: Cluster, helm: Path, release: str, namespace: str) -> None:
    """``helm uninstall`` (the documented one: its check refuses while policies exist) and the
    namespace; waits until the operator's pods are gone, so a later install (tests/operator's) never
    finds two operators. A refusal still removes the release (without the check), then fails."""
    uninstalled = uninstall_release(cluster, helm, release, namespace)
    if uninstalled.returncode != 0:
        uninstall_release(cluster, helm, release, namespace, hooks=False)
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", selector, "-o", "name", check=False
    ):
        time.sleep(0.5)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    if uninstalled.returncode != 0:
        raise AssertionError(f"helm uninstall {release} refused:\n{uninstalled.stderr}")


@contextmanager
def policy_namespace(env: E2E, base: str) -> Iterator[FleetPolicies]:
    """A fresh namespace for a test's policies; they are deleted through the operator's finalizer
    (which stops their pods and removes their Redis keys) before the namespace goes."""
    name = f"e2e-{base[:40].strip('-')}-{os.urandom(3).hex()}"
    create_namespace(env.cluster, name, "policies")
    policies = FleetPolicies(env, name)
    try:
        yield policies
    finally:
        env.cluster.kubectl("delete", "rlp", "--all", "-n", name, "--wait=false", check=False)
        try:
            wait_for(
                f"the policies of {name} to go",
                lambda: not env.cluster.kubectl("get", "rlp", "-n", name, "-o", "name", check=False),
                timeout=180,  # after c1, an operator rescheduled off a lost node must start first
                interval=0.5,
            )
        finally:
            env.cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# -- policies ------------------------------------------------------------------------------------------

#: 100K tokens per minute, one job type of 10K tokens: 10 slots for one pod, 5 for two, 3 for three.
TPM: dict[str, Any] = {
    "models": [{"name": "model-alpha", "limits": {"tokensPerMinute": 100000}}],
    "jobTypes": [{"name": "A", "ratio": 1, "estimate": {"tokens": 10000}}],
    "instance": {"heartbeatSeconds": 1, "instanceTimeoutSeconds": 5},
    "fleet": {"replicas": 1},
}

#: Concurrency only (no window budget, so a long load never waits for the next minute): 24 at once
#: over the fleet. Two pods: 12 each; interactive (fixed) 3, batch 6 and eval 3 (flexible).
MIXED: dict[str, Any] = {
    "models": [{"name": "model-alpha", "limits": {"maxConcurrentRequests": 24}}],
    "jobTypes": [
        {
            "name": "interactive",
            "ratio": 0.25,
            "flexible": False,
            "queue": {"maxWaiting": 512, "maxWaitSeconds": 60},
        },
        {"name": "batch", "ratio": 0.5, "flexible": True, "queue": {"maxWaiting": 512, "maxWaitSeconds": 60}},
        {"name": "eval", "ratio": 0.25, "flexible": True, "queue": {"maxWaiting": 512, "maxWaitSeconds": 60}},
    ],
    "instance": {"heartbeatSeconds": 1, "instanceTimeoutSeconds": 5},
    "fleet": {"replicas": 2},
}


def spec(
    base: dict[str, Any], replicas: int | None = None, change: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """A copy of ``base`` with ``replicas`` pods and ``change`` applied."""
    out = copy.deepcopy(base)
    if replicas is not None:
        out["fleet"] = {"replicas": replicas}
    if change is not None:
        change(out)
    return out


def planned(s: dict[str, Any], count: int) -> dict[str, Any]:
    """What every pod must report with ``count`` instances (``fleet-limiter plan --json``)."""
    return plan({k: v for k, v in s.items() if k != "fleet"}, count)


def slots_of(doc: dict[str, Any], job_type: str, model: str = "model-alpha") -> int:
    """Slots of a job type on a model in an allocation document or plan."""
    return int(doc["slotsByJobTypeAndModel"][job_type][model]["slots"])


def http_ok(url: str) -> bool:
    """GET answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
