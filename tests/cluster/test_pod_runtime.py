"""What a pod's process gets and how it is treated: environment, restarts, signals, service-account RBAC."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.cluster.conftest import Cluster, wait_until

pytestmark = pytest.mark.cluster


def pod(name: str, script: str, *, restart: str = "Never", **spec: Any) -> dict[str, Any]:
    """A pod running a Python one-off script in the project's virtualenv."""
    container: dict[str, Any] = {
        "name": "main",
        "image": "fleet-limiter:dev",
        "command": ["python", "-c", script],
    }
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": restart, "containers": [container], **spec},
    }


def wait_phase(
    cluster: Cluster, ns: str, name: str, phases: tuple[str, ...], timeout: float = 60
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        p = cluster.get("pod", name, ns)
        return p if p.get("status", {}).get("phase") in phases else None

    return dict(wait_until(f"pod {ns}/{name} to reach {phases}", check, timeout=timeout))


def test_env_from_a_secret_a_configmap_and_the_downward_api_arrives(cluster: Cluster, namespace: str) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
              "stringData": {"api-key": "s3cr3t-value"}}  # fmt: skip
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
              "data": {"MODE": "fast", "LEVEL": "3"}}  # fmt: skip
    script = (
        "import json, os; keys = ['API_KEY', 'CFG_MODE', 'CFG_LEVEL', 'POD_NAME', 'POD_NAMESPACE', 'POD_IP',"
        " 'NODE', 'SA', 'GREETING', 'KUBECONFIG']; print(json.dumps({k: os.environ.get(k) for k in keys}))"
    )
    field = lambda path: {"valueFrom": {"fieldRef": {"fieldPath": path}}}  # noqa: E731
    env = [
        {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "api-key"}}},
        {"name": "POD_NAME", **field("metadata.name")},
        {"name": "POD_NAMESPACE", **field("metadata.namespace")},
        {"name": "POD_IP", **field("status.podIP")},
        {"name": "NODE", **field("spec.nodeName")},
        {"name": "SA", **field("spec.serviceAccountName")},
        {"name": "GREETING", "value": "hello $(POD_NAME)"},
    ]
    container = {"env": env, "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "settings"}}]}
    cluster.apply([secret, config, pod("env", script, container=container)], namespace)

    done = wait_phase(cluster, namespace, "env", ("Succeeded", "Failed"))
    assert done["status"]["phase"] == "Succeeded"
    seen = json.loads(cluster.kubectl("logs", "env", "-n", namespace).strip().splitlines()[-1])
    assert seen["API_KEY"] == "s3cr3t-value"
    assert (seen["CFG_MODE"], seen["CFG_LEVEL"]) == ("fast", "3")
    assert (seen["POD_NAME"], seen["POD_NAMESPACE"]) == ("env", namespace)
    assert seen["POD_IP"] == done["status"]["podIP"] and seen["POD_IP"].startswith("127.")
    assert (seen["NODE"], seen["SA"], seen["GREETING"]) == ("local-node", "default", "hello env")
    assert seen["KUBECONFIG"]


def test_a_container_exiting_non_zero_is_restarted_and_its_restart_count_rises(
    cluster: Cluster, namespace: str
) -> None:
    cluster.apply(pod("crash", "import sys; print('failing'); sys.exit(3)", restart="Always"), namespace)

    def restarted_twice() -> dict[str, Any] | None:
        statuses = cluster.get("pod", "crash", namespace).get("status", {}).get("containerStatuses") or []
        return statuses[0] if statuses and statuses[0]["restartCount"] >= 2 else None

    status = wait_until("two restarts", restarted_twice, timeout=60)
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["lastState"]["terminated"]["reason"] == "Error"
    assert "failing" in cluster.kubectl("logs", "crash", "-n", namespace, "--previous")


def test_restart_policy_never_leaves_a_failed_pod(cluster: Cluster, namespace: str) -> None:
    cluster.apply(pod("once", "raise SystemExit(7)", restart="Never"), namespace)
    done = wait_phase(cluster, namespace, "once", ("Failed",))
    status = done["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0 and status["state"]["terminated"]["exitCode"] == 7
    time.sleep(3)
    assert cluster.get("pod", "once", namespace)["status"]["containerStatuses"][0]["restartCount"] == 0


def test_deletion_sends_sigterm_and_completes_within_the_grace_period(
    cluster: Cluster, namespace: str
) -> None:
    script = (
        "import signal, sys, time\n"
        "def bye(*_):\n    print('got SIGTERM', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\nprint('started', flush=True)\nwhile True: time.sleep(0.1)\n"
    )
    cluster.apply(pod("graceful", script, restart="Always", terminationGracePeriodSeconds=30), namespace)
    wait_phase(cluster, namespace, "graceful", ("Running",))
    wait_until(
        "the process to start", lambda: "started" in cluster.kubectl("logs", "graceful", "-n", namespace)
    )
    log_dir = cluster.state_dir / "logs" / "pods"

    started = time.monotonic()
    cluster.kubectl("delete", "pod", "graceful", "-n", namespace, "--wait=true", timeout=60)
    assert time.monotonic() - started < 20, (
        "a process that exits on SIGTERM must not wait out the grace period"
    )
    logs = [p for p in log_dir.glob(f"{namespace}_graceful_*/main/*.log")]
    assert logs and "got SIGTERM" in logs[0].read_text()


def test_a_failing_liveness_probe_restarts_the_container(cluster: Cluster, namespace: str) -> None:
    probe = {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 2, "timeoutSeconds": 1}
    spec = pod("unhealthy", "import time; time.sleep(3600)", restart="Always",
               terminationGracePeriodSeconds=1, container={"livenessProbe": probe})  # fmt: skip
    cluster.apply(spec, namespace)

    def restarted() -> bool:
        statuses = cluster.get("pod", "unhealthy", namespace).get("status", {}).get("containerStatuses") or []
        return bool(statuses) and statuses[0]["restartCount"] >= 1

    wait_until("a liveness restart", restarted, timeout=60)


RBAC_SCRIPT = """
import json, os
from kubernetes import client, config
from kubernetes.client.rest import ApiException
config.load_kube_config()  # from $KUBECONFIG: the pod's service-account token
ns = os.environ["NS"]
try:
    items = client.CoreV1Api().list_namespaced_config_map(ns).items
    print(json.dumps({"status": 200, "names": sorted(i.metadata.name for i in items)}))
except ApiException as e:
    print(json.dumps({"status": e.status}))
"""


def test_a_pod_runs_with_exactly_its_service_accounts_rbac(cluster: Cluster, namespace: str) -> None:
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "visible"}, "data": {"a": "b"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "read-configmaps"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "reader-reads"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    ]
    env = {"env": [{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]}
    for sa in ("reader", "nobody"):
        objects.append(pod(f"as-{sa}", RBAC_SCRIPT, serviceAccountName=sa, container=env))
        can_i = ["kubectl", "auth", "can-i", "list", "configmaps"]
        objects.append(pod(f"can-i-{sa}", "", serviceAccountName=sa, container={"command": can_i}))
    cluster.apply(objects, namespace)

    results = {}
    for sa in ("reader", "nobody"):
        wait_phase(cluster, namespace, f"as-{sa}", ("Succeeded", "Failed"))
        results[sa] = json.loads(
            cluster.kubectl("logs", f"as-{sa}", "-n", namespace).strip().splitlines()[-1]
        )
    assert results["reader"]["status"] == 200 and "visible" in results["reader"]["names"]
    assert results["nobody"]["status"] == 403

    wait_phase(cluster, namespace, "can-i-reader", ("Succeeded",))
    assert cluster.kubectl("logs", "can-i-reader", "-n", namespace).strip() == "yes"
    wait_phase(cluster, namespace, "can-i-nobody", ("Failed",))  # `kubectl auth can-i` exits 1 for "no"
    assert cluster.kubectl("logs", "can-i-nobody", "-n", namespace).strip() == "no"
