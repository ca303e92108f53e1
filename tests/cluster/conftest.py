"""Fixtures for tests against the local Kubernetes control plane (tools/localcluster).

The session fixture brings the cluster up once (`cluster.py up` reuses a running, healthy one) and
never skips: if the cluster cannot start, every test that needs it errors with the reason. The binaries
are built beforehand by `make cluster-build` (a dependency of `make test-cluster`), so no per-test
timeout has to cover a Go build.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCALCLUSTER = ROOT / "tools" / "localcluster"


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    bin_dir: Path
    state_dir: Path

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60) -> str:
        """Runs the cluster's own kubectl (built with it) against the admin kubeconfig; returns stdout."""
        proc = subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]], namespace: str) -> None:
        items = manifest if isinstance(manifest, list) else [manifest]
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        self.kubectl("apply", "-n", namespace, "-f", "-", input=doc)

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", kind, name, "-n", namespace, "-o", "json"))

    def pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", "pods", "-n", namespace, "-o", "json"]
        if selector:
            args += ["-l", selector]
        return list(json.loads(self.kubectl(*args))["items"])


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.5) -> Any:
    """Polls check() until it returns something truthy, which is returned; fails naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def _cluster_env() -> dict[str, str]:
    out = subprocess.run(
        ["bash", "-c", f'source "{LOCALCLUSTER}/env.sh" && echo "$CLUSTER_BIN"'],
        check=True,
        capture_output=True,
        text=True,
    )
    return {"bin": out.stdout.strip()}


def _cluster_py(command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LOCALCLUSTER / "cluster.py"), command],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The local cluster, brought up once per session, or reused when already up and healthy.

    A cluster this fixture started is stopped at the end of the session; one that was running is left running.
    """
    was_up = _cluster_py("status", timeout=30).returncode == 0
    proc = _cluster_py("up", timeout=300)
    if proc.returncode != 0:
        pytest.fail(
            "the local cluster did not come up (`make cluster-build` first if its binaries are missing):\n"
            f"{proc.stdout}{proc.stderr}",
            pytrace=False,
        )
    yield Cluster(
        kubeconfig=ROOT / ".cluster" / "kubeconfig",
        bin_dir=Path(_cluster_env()["bin"]),
        state_dir=ROOT / ".cluster",
    )
    if not was_up:
        _cluster_py("down", timeout=120)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for its pods to go)."""
    name = f"t-{request.node.name[:30].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    wait_until(
        f"the default service account in {name}",
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False),
        timeout=30,
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
