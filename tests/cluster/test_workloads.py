"""Deployments on the local node: pods as local processes, each on its own loopback address."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import Cluster, wait_until

pytestmark = pytest.mark.cluster

PORT = 8080


def web_deployment(name: str, replicas: int = 2) -> dict[str, Any]:
    """A Deployment of `python -m http.server` bound to the pod's own address (downward API)."""
    container = {
        "name": "web",
        "image": "python:3.11-slim",  # recorded only: the local node runs the command in the project's venv
        "command": ["python", "-m", "http.server", str(PORT), "--bind", "$(POD_IP)"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 2, "initialDelaySeconds": 2},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 5},
            },
        },
    }


def ready_pods(cluster: Cluster, ns: str, app: str, count: int) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        pods = [p for p in cluster.pods(ns, f"app={app}") if not p["metadata"].get("deletionTimestamp")]
        ready = [
            p
            for p in pods
            if any(
                c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or []
            )
        ]
        return ready if len(ready) == count == len(pods) else None

    return list(wait_until(f"{count} ready pods of {app} in {ns}", check, timeout=90))


def pid_of(pod: dict[str, Any]) -> int:
    container_id = pod["status"]["containerStatuses"][0]["containerID"]
    assert container_id.startswith("localprocess://"), container_id
    return int(container_id.removeprefix("localprocess://"))


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pod_processes(pod_name: str) -> list[int]:
    """Every process started for that pod (they carry HOSTNAME=<pod name> and the cluster's tag)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"HOSTNAME={pod_name}".encode() in env and any(
                e.startswith(b"FLEET_LOCALCLUSTER=") for e in env
            ):
                found.append(int(entry.name))
    return found


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


@pytest.mark.timeout(180)
def test_deployment_pods_become_ready_and_answer_on_their_own_addresses(
    cluster: Cluster, namespace: str
) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    cluster.apply([web_deployment("web"), service], namespace)
    cluster.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=90s", timeout=100)

    pods = ready_pods(cluster, namespace, "web", 2)
    ips = sorted(p["status"]["podIP"] for p in pods)
    assert len(set(ips)) == 2 and all(ip.startswith("127.") for ip in ips), ips
    for ip in ips:
        assert "Directory listing" in get_text(f"http://{ip}:{PORT}/")
    for p in pods:
        status = p["status"]["containerStatuses"][0]
        assert status["ready"] and status["image"] == "python:3.11-slim" and "running" in status["state"]

    # No proxying, and Endpoints/EndpointSlices refuse loopback addresses: clients find the pods by the
    # Service's selector and connect to their pod IPs.
    selector = ",".join(
        f"{k}={v}" for k, v in cluster.get("service", "web", namespace)["spec"]["selector"].items()
    )
    assert sorted(p["status"]["podIP"] for p in cluster.pods(namespace, selector)) == ips


@pytest.mark.timeout(180)
def test_a_deleted_pod_is_stopped_and_replaced_by_its_replicaset(cluster: Cluster, namespace: str) -> None:
    cluster.apply(web_deployment("web"), namespace)
    pods = ready_pods(cluster, namespace, "web", 2)
    victim = pods[0]
    pid = pid_of(victim)
    assert alive(pid)

    cluster.kubectl("delete", "pod", victim["metadata"]["name"], "-n", namespace, "--wait=true", timeout=60)
    assert not alive(pid)
    replaced = ready_pods(cluster, namespace, "web", 2)
    names = {p["metadata"]["name"] for p in replaced}
    assert victim["metadata"]["name"] not in names
    for p in replaced:
        assert "Directory listing" in get_text(f"http://{p['status']['podIP']}:{PORT}/")


@pytest.mark.timeout(120)
def test_a_forced_delete_ends_the_process(cluster: Cluster, namespace: str) -> None:
    cluster.apply(web_deployment("web", replicas=1), namespace)
    (pod,) = ready_pods(cluster, namespace, "web", 1)
    pid = pid_of(pod)
    name = pod["metadata"]["name"]
    assert alive(pid)

    cluster.kubectl("delete", "pod", name, "-n", namespace, "--grace-period=0", "--force")
    wait_until(f"the process of {name} (pid {pid}) to end", lambda: not alive(pid), timeout=15)
    wait_until(f"no process left for {name}", lambda: not pod_processes(name), timeout=15)


@pytest.mark.timeout(180)
def test_scaling_to_zero_leaves_no_process_running(cluster: Cluster, namespace: str) -> None:
    cluster.apply(web_deployment("web", replicas=2), namespace)
    pods = ready_pods(cluster, namespace, "web", 2)
    pids = [pid_of(p) for p in pods]
    names = [p["metadata"]["name"] for p in pods]
    assert all(alive(pid) for pid in pids)

    cluster.kubectl("scale", "deployment/web", "-n", namespace, "--replicas=0")
    wait_until("the pods to be gone", lambda: not cluster.pods(namespace, "app=web"), timeout=60)
    assert not any(alive(pid) for pid in pids)
    assert not [pid for name in names for pid in pod_processes(name)]
