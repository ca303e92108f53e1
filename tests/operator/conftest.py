"""Fixtures of the operator's cluster tests: the chart installed with Helm, a private Redis, namespaces.

The operator runs as a pod of the installed chart, with the chart's RBAC (never admin rights); on
the local control plane its container command runs from the project's virtualenv. Pods are local
processes there, so the session's private redis-server on 127.0.0.1 is reachable from them and is
handed to the chart as ``redis.url``. The cluster comes from tests/cluster/conftest.py (brought up
once per session, or reused). Nothing is skipped: a missing helm, redis-server or cluster fails the
tests that need it, with the command that fixes it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import conftest as cluster_conftest
from tests.cluster.conftest import Cluster
from tests.operator.support import Policies, purge_stale, run, uninstall_release
from tests.support.redis_server import RedisServer, RedisServerMissing

#: The local cluster, once per session (tests/cluster/conftest.py).
cluster = cluster_conftest.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "fleet-limiter"
TEST_LABEL = "fleet-limiter-tests"
STATUS_INTERVAL = 1  # seconds: the operator's timer in tests (the chart's default is 5)


@pytest.fixture(scope="session")
def helm() -> Path:
    """The helm binary built with the local cluster (`make cluster-build`)."""
    path = Path(cluster_conftest._cluster_env()["bin"]) / "helm"
    if not path.exists():
        pytest.fail(
            f"{path} is missing: run `make cluster-build` (it builds kubectl and helm)", pytrace=False
        )
    return path


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The operator's default Redis for the session (policies without spec.redis use it)."""
    try:
        server = RedisServer(appendonly=True)
    except RedisServerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@dataclass(frozen=True)
class Release:
    """The chart installed for this session."""

    name: str
    namespace: str
    redis: RedisServer

    @property
    def operator_selector(self) -> str:
        return f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator"

    @property
    def service_account(self) -> str:
        return f"{self.name}-fleet-limiter"


def _other_operators(cluster: Cluster, namespace: str) -> list[str]:
    out = cluster.kubectl(
        "get", "pods", "-A", "-o", "json",
        "-l", "app.kubernetes.io/name=fleet-limiter,app.kubernetes.io/component=operator",
    )  # fmt: skip
    return [
        f"{p['metadata']['namespace']}/{p['metadata']['name']}"
        for p in json.loads(out)["items"]
        if p["metadata"]["namespace"] != namespace and not p["metadata"].get("deletionTimestamp")
    ]


@pytest.fixture(scope="session")
def release(cluster: Cluster, helm: Path, redis_server: RedisServer) -> Iterator[Release]:
    """`helm install` of charts/fleet-limiter into a fresh namespace, the session's Redis as the default."""
    purge_stale(cluster, helm, TEST_LABEL)
    suffix = uuid.uuid4().hex[:5]
    rel = Release(name=f"flt-{suffix}", namespace=f"flt-operator-{suffix}", redis=redis_server)
    others = _other_operators(cluster, rel.namespace)
    if others:
        pytest.fail(
            f"another fleet-limiter operator runs in this cluster ({', '.join(others)}); it would act on the "
            "tests' policies too: uninstall it first",
            pytrace=False,
        )
    # helm installs crds/ only when absent: bring an older CRD of an earlier run up to date first.
    if cluster.kubectl("get", "crd", "ratelimitpolicies.fleetlimiter.io", check=False):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    cluster.kubectl("create", "namespace", rel.namespace)
    cluster.kubectl("label", "namespace", rel.namespace, f"{TEST_LABEL}=operator")
    install = run(
        [
            str(helm), "install", rel.name, str(CHART), "-n", rel.namespace,
            f"--kubeconfig={cluster.kubeconfig}",
            "--set", f"redis.url={redis_server.url}",
            "--set", f"operator.statusIntervalSeconds={STATUS_INTERVAL}",
            "--set", "limiter.terminationGracePeriodSeconds=10",
            "--wait", "--timeout", "120s",
        ],
        check=False, timeout=150,
    )  # fmt: skip
    if install.returncode != 0:
        pytest.fail(f"helm install failed:\n{install.stdout}{install.stderr}", pytrace=False)
    yield rel
    # The documented uninstall: the policies went with their tests, so the chart's check passes.
    uninstalled = uninstall_release(cluster, helm, rel.name, rel.namespace)
    if uninstalled.returncode != 0:
        uninstall_release(cluster, helm, rel.name, rel.namespace, hooks=False)
    cluster.kubectl("delete", "namespace", rel.namespace, "--wait=false", check=False)
    if uninstalled.returncode != 0:
        pytest.fail(f"helm uninstall refused:\n{uninstalled.stderr}", pytrace=False)


@pytest.fixture
def policies(cluster: Cluster, release: Release, request: pytest.FixtureRequest) -> Iterator[Policies]:
    """A fresh namespace for the test's policies; they are deleted (through the operator's finalizer,
    with a bounded wait) before the namespace goes."""
    base = request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:28].strip("-")
    name = f"flt-{base}-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, f"{TEST_LABEL}=policies")
    p = Policies(cluster, name, release.redis.url)
    yield p
    cluster.kubectl("delete", "rlp", "--all", "-n", name, "--wait=false", check=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and cluster.kubectl(
        "get", "rlp", "-n", name, "-o", "name", check=False
    ):
        time.sleep(0.5)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def operator_pods(cluster: Cluster, release: Release) -> list[dict[str, Any]]:
    """The release's running operator pods."""
    out = cluster.kubectl(
        "get", "pods", "-n", release.namespace, "-l", release.operator_selector, "-o", "json"
    )
    return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]


def operator_log(cluster: Cluster, release: Release, pod: str) -> str:
    """The log of one operator pod."""
    return cluster.kubectl("logs", pod, "-n", release.namespace, check=False)
