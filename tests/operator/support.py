"""Helpers of the operator's cluster tests: policies in a namespace, their pods, their allocations."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import yaml

from tests.cluster.conftest import Cluster, wait_until

FLEET_LIMITER = Path(sys.executable).with_name("fleet-limiter")
#: The operator's command line, for its uninstall commands (check-uninstall, release-finalizers).
OPERATOR_CLI = Path(sys.executable).with_name("fleet-limiter-operator")
POLICY_LABEL = "fleetlimiter.io/policy"


def run(argv: list[str], *, check: bool = True, timeout: float = 60, input: str | None = None) -> Any:
    """A command's CompletedProcess (text); ``check`` fails with its stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:3])} ... exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def uninstall_release(
    cluster: Cluster, helm: Path, release: str, namespace: str, *, hooks: bool = True
) -> Any:
    """``helm uninstall --wait`` (its pre-delete hook refuses while policies exist, unless ``hooks`` is
    False); the CompletedProcess."""
    argv = [str(helm), "uninstall", release, "-n", namespace, f"--kubeconfig={cluster.kubeconfig}",
            "--wait", "--timeout", "90s", *([] if hooks else ["--no-hooks"])]  # fmt: skip
    return run(argv, check=False, timeout=120)


def purge_stale(cluster: Cluster, helm: Path, label: str, policy_wait: float = 15) -> None:
    """Remove what an interrupted run left in the namespaces labelled ``label``, in the order of
    docs/operator.md#uninstall: its policies are deleted while its operator may still run their
    finalizer (``policy_wait`` seconds); its Helm releases are uninstalled (without the pre-delete
    check when policies are left: their operator is gone or cannot reach the run's Redis any more);
    what is left is released with ``fleet-limiter-operator release-finalizers``; then the namespaces
    go, and no namespace of the run is left Terminating."""
    out = cluster.kubectl("get", "namespaces", "-l", label, "-o", "json")
    names = sorted(ns["metadata"]["name"] for ns in json.loads(out)["items"])
    if not names:
        return
    print(f"removing what an interrupted run left in {', '.join(names)}", file=sys.stderr)

    def policies_left() -> list[str]:
        return [
            line
            for ns in names
            for line in cluster.kubectl("get", "rlp", "-n", ns, "-o", "name", check=False).split()
        ]

    for ns in names:
        cluster.kubectl("delete", "rlp", "--all", "-n", ns, "--wait=false", check=False)
    deadline = time.monotonic() + policy_wait
    while policies_left() and time.monotonic() < deadline:
        time.sleep(0.5)
    stuck = bool(policies_left())
    helm_argv = [str(helm), f"--kubeconfig={cluster.kubeconfig}"]
    for ns in names:
        for release in run([*helm_argv, "list", "-n", ns, "-q"], check=False).stdout.split():
            if stuck or uninstall_release(cluster, helm, release, ns).returncode != 0:
                uninstall_release(cluster, helm, release, ns, hooks=False)
    if stuck:
        released = run(
            [str(OPERATOR_CLI), "release-finalizers", f"--kubeconfig={cluster.kubeconfig}",
             *(arg for ns in names for arg in ("-n", ns))],
        )  # fmt: skip
        print(released.stdout, end="", file=sys.stderr)
    cluster.kubectl("delete", "namespace", *names, "--wait=false", check=False)
    wait_for(
        f"the namespaces {', '.join(names)} of an interrupted run to go",
        lambda: (
            not cluster.kubectl(
                "get", "namespaces", *names, "--ignore-not-found", "-o", "name", check=False
            ).strip()
        ),
        timeout=120,
        interval=0.5,
    )


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.25) -> Any:
    """:func:`tests.cluster.conftest.wait_until`, polling every 0.25 s: the operator's changes are timed."""
    return wait_until(what, check, timeout, interval)


def manifest(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "fleetlimiter.io/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def plan(spec: dict[str, Any], instances: int) -> dict[str, Any]:
    """`fleet-limiter plan --json` of a spec: what every pod must report for that many instances."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(spec, f)
    try:
        out = run([str(FLEET_LIMITER), "plan", "--policy", f.name, "--instances", str(instances), "--json"])
    finally:
        Path(f.name).unlink()
    return dict(json.loads(out.stdout))


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def is_ready(obj: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


class Policies:
    """RateLimitPolicies of one test namespace, and what the operator made of them."""

    def __init__(self, cluster: Cluster, namespace: str, redis_url: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.redis_url = redis_url

    # -- kubectl ----------------------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> Any:
        """kubectl with the admin kubeconfig in this namespace (CompletedProcess)."""
        argv = [
            str(self.cluster.kubectl_path),
            f"--kubeconfig={self.cluster.kubeconfig}",
            "-n",
            self.namespace,
        ]
        return run([*argv, *args], check=check, input=input)

    def apply(self, name: str, spec: dict[str, Any], *, check: bool = True) -> Any:
        """`kubectl apply` (strict field validation, kubectl's default) of a policy."""
        return self.kubectl(
            "apply", "-f", "-", check=check, input=json.dumps(manifest(name, self.namespace, spec))
        )

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        proc = self.kubectl("get", kind, name, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def policy(self, name: str) -> dict[str, Any]:
        obj = self.get("rlp", name)
        assert obj is not None, f"policy {self.namespace}/{name} does not exist"
        return obj

    def condition(self, name: str, kind: str = "Ready") -> dict[str, Any] | None:
        for c in (self.policy(name).get("status") or {}).get("conditions") or []:
            if c["type"] == kind:
                return dict(c)
        return None

    def wait_condition(
        self, name: str, kind: str, status: str, reason: str | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        """Until the condition has ``status`` (and ``reason``) for the policy's current generation."""

        def check() -> dict[str, Any] | None:
            obj = self.policy(name)
            gen = obj["metadata"]["generation"]
            for c in (obj.get("status") or {}).get("conditions") or []:
                if (
                    c["type"] == kind
                    and c["status"] == status
                    and (reason is None or c["reason"] == reason)
                    and c.get("observedGeneration") == gen
                ):
                    return obj
            return None

        return dict(wait_for(f"{name}: {kind}={status} {reason or ''}", check, timeout))

    def wait_ready(self, name: str, timeout: float = 60) -> dict[str, Any]:
        return self.wait_condition(name, "Ready", "True", "FleetReady", timeout)

    # -- the fleet --------------------------------------------------------------------------------------

    def pods(self, name: str) -> list[dict[str, Any]]:
        """The policy's pods that are not being deleted."""
        out = self.kubectl("get", "pods", "-l", f"{POLICY_LABEL}={name}", "-o", "json").stdout
        return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]

    def all_pods(self, name: str) -> list[dict[str, Any]]:
        out = self.kubectl("get", "pods", "-l", f"{POLICY_LABEL}={name}", "-o", "json").stdout
        return list(json.loads(out)["items"])

    def wait_pods(self, name: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        """Exactly ``count`` pods, all ready, and no other pod of the policy left (terminating ones too)."""

        def check() -> list[dict[str, Any]] | None:
            every = self.all_pods(name)
            ready = [p for p in every if is_ready(p) and not p["metadata"].get("deletionTimestamp")]
            return ready if len(ready) == count == len(every) else None

        if count == 0:
            wait_for(f"no pod of {name}", lambda: not self.all_pods(name), timeout)
            return []
        return list(wait_for(f"{count} ready pod(s) of {name}", check, timeout))

    def allocation(self, pod: dict[str, Any]) -> dict[str, Any]:
        """GET /api/debug/allocation of a pod, on its own address and port 8080."""
        return dict(get_json(f"http://{pod['status']['podIP']}:8080/api/debug/allocation"))

    def wait_allocations(
        self, name: str, spec: dict[str, Any], count: int, timeout: float = 30
    ) -> list[dict[str, Any]]:
        """Until ``count`` ready pods each report the allocation `fleet-limiter plan` gives for ``count``."""
        expected = plan(spec, count)

        def check() -> list[dict[str, Any]] | None:
            pods = self.wait_pods(name, count, timeout)
            try:
                docs = [self.allocation(p) for p in pods]
            except (urllib.error.URLError, OSError):
                return None
            ok = all(
                d["allocation"] == expected["allocation"]
                and d["slotsByJobTypeAndModel"] == expected["slotsByJobTypeAndModel"]
                for d in docs
            )
            return pods if ok else None

        return list(wait_for(f"every pod of {name} to hold the plan for {count}", check, timeout))

    # -- Redis ------------------------------------------------------------------------------------------

    def redis_keys(self, name: str, url: str | None = None) -> list[str]:
        """The keys of the policy in Redis (its hash tag ``{namespace/name}``)."""
        client = redis.Redis.from_url(url or self.redis_url, socket_timeout=5)
        try:
            return sorted(k.decode() for k in client.keys(f"fl:{{{self.namespace}/{name}}}:*"))
        finally:
            client.close()

    def redis_policy(self, name: str, url: str | None = None) -> tuple[int | None, int | None]:
        """(projected generation, allocation epoch) as Redis holds them."""
        client = redis.Redis.from_url(url or self.redis_url, socket_timeout=5)
        try:
            tag = f"{{{self.namespace}/{name}}}"
            generation = client.hget(f"fl:{tag}:policy", "generation")
            allocation = client.get(f"fl:{tag}:allocation")
        finally:
            client.close()
        epoch = json.loads(allocation)["epoch"] if allocation else None
        return (int(generation) if generation else None), epoch
