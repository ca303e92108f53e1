"""Container scenario (0): the chart's defaults on real containers (kind only, ``containers``).

``helm install`` of charts/fleet-limiter with only the images named (kind has no registry here, so
the Redis image is named too; nothing else is set): the in-chart Redis with its append-only file on
a PersistentVolumeClaim the cluster's provisioner binds, and the operator. Every policy in
examples/ is applied with kubectl and becomes Ready, with its limiter pods Ready through the
kubelet's own probes; the chart's Service names resolve inside a limiter pod, to the Services'
addresses. Then the Grafana dashboard ConfigMap and the ServiceMonitors are turned on with
``helm upgrade`` (after a ServiceMonitor CRD is applied, as the Prometheus Operator would) and the
API server takes them.

Like test_0_uninstall.py it installs a release of its own before the package's install: two
operators must never serve the same cluster.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import env as e2e_env
from tests.e2e.conftest import Tools
from tests.e2e.kube import other_operators
from tests.e2e.record import ScenarioRecord
from tests.operator.support import OPERATOR_CLI, run, uninstall_release, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.containers]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "fleet-limiter"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SERVICEMONITOR_CRD = ROOT / "tests" / "operator" / "servicemonitor-crd.yaml"


def image_values(tools: Tools) -> list[str]:
    """``--set`` of the two images, and nothing else."""
    values = []
    for key, image in (("image", tools.settings.image), ("redis.image", tools.settings.redis_image)):
        assert image, f"{key}: the suite's settings name no image"
        repository, _, tag = image.rpartition(":")
        values += ["--set", f"{key}.repository={repository}", "--set", f"{key}.tag={tag}"]
    return values


def helm(tools: Tools, *args: str, timeout: float = 360) -> Any:
    proc = run(
        [str(tools.helm), *args, f"--kubeconfig={tools.kube.kubeconfig}"], check=False, timeout=timeout
    )
    assert proc.returncode == 0, f"helm {' '.join(args[:2])} failed:\n{proc.stdout}{proc.stderr}"
    return proc


def replicas_of(policy: dict[str, Any]) -> int:
    return int((policy["spec"].get("fleet") or {}).get("replicas", 1))


@pytest.mark.timeout(900)
def test_the_charts_defaults_run_every_example(swept: Tools, record: ScenarioRecord) -> None:
    others = other_operators(swept.kube)
    if others:
        pytest.fail(
            f"another fleet-limiter operator runs in this cluster ({', '.join(others)})", pytrace=False
        )
    kube = swept.kube
    suffix = os.urandom(3).hex()
    release, namespace, policy_ns = f"e2e-{suffix}", f"fleet-e2e-{suffix}", f"e2e-examples-{suffix}"
    crd_created = False
    e2e_env.create_namespace(kube, namespace, "release")
    e2e_env.create_namespace(kube, policy_ns, "policies")
    try:
        record.step(f"helm install {release} charts/fleet-limiter, only the images named")
        started = time.time()
        helm(
            swept,
            "install",
            release,
            str(CHART),
            "-n",
            namespace,
            *image_values(swept),
            "--wait",
            "--timeout",
            "300s",
        )
        record.figure("helm_install_s", round(time.time() - started, 1))

        # The in-chart Redis: its append-only file in /data, a bound PersistentVolumeClaim.
        pvcs = json.loads(kube.kubectl("get", "pvc", "-n", namespace, "-o", "json"))["items"]
        assert [p["status"]["phase"] for p in pvcs] == ["Bound"], pvcs
        selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=redis"
        (redis_deploy,) = kube.kubectl(
            "get", "deployment", "-n", namespace, "-l", selector, "-o", "name"
        ).split()
        config = kube.kubectl(
            "exec", "-n", namespace, redis_deploy, "--", "redis-cli", "CONFIG", "GET", "appendonly"
        )
        assert config.split() == ["appendonly", "yes"], config
        volumes = json.loads(kube.kubectl("get", redis_deploy, "-n", namespace, "-o", "json"))["spec"][
            "template"
        ]["spec"]["volumes"]
        assert {v.get("persistentVolumeClaim", {}).get("claimName") for v in volumes} >= {
            pvcs[0]["metadata"]["name"]
        }, volumes

        record.step(f"kubectl apply of every example ({', '.join(p.stem for p in EXAMPLES)})")
        policies = []
        for path in EXAMPLES:
            doc = yaml.safe_load(path.read_text())
            doc["metadata"].pop("namespace", None)  # production.yaml names `default`: here, the test's
            policies.append(doc)
            kube.kubectl("apply", "-n", policy_ns, "-f", "-", input=yaml.safe_dump(doc))
        applied = time.time()
        kube.kubectl(
            "wait", "--for=condition=Ready", "rlp", "--all", "-n", policy_ns, "--timeout=300s", timeout=310
        )
        record.figure("examples_ready_s", round(time.time() - applied, 1))
        want = sum(replicas_of(p) for p in policies)
        wait_for(
            f"{want} limiter pods",
            lambda: len(kube.kubectl("get", "pods", "-n", policy_ns, "-o", "name").split()) == want,
            timeout=120,
            interval=1,
        )
        kube.kubectl(
            "wait", "--for=condition=Ready", "pods", "--all", "-n", policy_ns, "--timeout=240s", timeout=250
        )
        record.figure("examples_pods_ready_s", round(time.time() - applied, 1))
        pods = json.loads(kube.kubectl("get", "pods", "-n", policy_ns, "-o", "json"))["items"]
        assert len(pods) == want
        for pod in pods:  # Ready through the kubelet's probes: the pods have them, and no restarts
            (container,) = pod["spec"]["containers"]
            assert container.get("readinessProbe") and container.get("livenessProbe"), container
            (status,) = pod["status"]["containerStatuses"]
            assert status["ready"] and status["restartCount"] == 0, status
        rows = kube.kubectl("get", "rlp", "-n", policy_ns, "--no-headers").splitlines()
        record.figure("kubectl_get_rlp", rows)
        assert len(rows) == len(EXAMPLES)

        # Service names resolve inside a pod (cluster DNS), to the Services' addresses.
        services = json.loads(kube.kubectl("get", "svc", "-A", "-o", "json"))["items"]
        ours = {
            f"{s['metadata']['name']}.{s['metadata']['namespace']}.svc.cluster.local": s["spec"]["clusterIP"]
            for s in services
            if s["metadata"]["namespace"] in (namespace, policy_ns)
            and s["spec"].get("clusterIP") not in (None, "None")
        }
        assert any("-redis." in name for name in ours) and any(
            n.endswith(f".{policy_ns}.svc.cluster.local") for n in ours
        ), ours
        probe = "import socket, sys; print(' '.join(socket.gethostbyname(n) for n in sys.argv[1:]))"
        names = sorted(ours)
        out = kube.kubectl(
            "exec", "-n", policy_ns, pods[0]["metadata"]["name"], "--", "python3", "-c", probe, *names
        )
        resolved = dict(zip(names, out.split(), strict=True))
        record.figure("dns", resolved)
        assert resolved == {n: ours[n] for n in names}

        # The dashboard ConfigMap and the ServiceMonitors, turned on.
        if not kube.kubectl(
            "get", "crd", "servicemonitors.monitoring.coreos.com", "--ignore-not-found", "-o", "name"
        ):
            kube.kubectl("apply", "-f", str(SERVICEMONITOR_CRD))
            crd_created = True
            kube.kubectl(
                "wait",
                "--for=condition=Established",
                "crd/servicemonitors.monitoring.coreos.com",
                "--timeout=60s",
            )
        record.step("helm upgrade: dashboards.enabled, serviceMonitor.enabled")
        helm(
            swept, "upgrade", release, str(CHART), "-n", namespace, "--reuse-values",
            "--set", "dashboards.enabled=true", "--set", "serviceMonitor.enabled=true",
            "--wait", "--timeout", "300s",
        )  # fmt: skip
        maps = json.loads(
            kube.kubectl("get", "configmap", "-n", namespace, "-l", "grafana_dashboard=1", "-o", "json")
        )
        (dashboard,) = maps["items"]
        (board,) = dashboard["data"].values()
        assert json.loads(board)["panels"], "the dashboard has no panels"
        monitors = kube.kubectl("get", "servicemonitors", "-n", namespace, "-o", "name").split()
        record.figure("servicemonitors", monitors)
        assert monitors, "no ServiceMonitor was created"
    finally:
        kube.kubectl("delete", "rlp", "--all", "-n", policy_ns, "--wait=false", check=False)
        try:
            wait_for(
                "the examples' policies to go",
                lambda: not kube.kubectl("get", "rlp", "-n", policy_ns, "-o", "name", check=False),
                timeout=120,
                interval=0.5,
            )
        finally:
            run(
                [str(OPERATOR_CLI), "release-finalizers", f"--kubeconfig={kube.kubeconfig}", "-n", policy_ns],
                check=False,
            )
            uninstall_release(kube, swept.helm, release, namespace)
            kube.kubectl("delete", "namespace", namespace, policy_ns, "--wait=false", check=False)
            if crd_created:
                kube.kubectl("delete", "-f", str(SERVICEMONITOR_CRD), "--wait=false", check=False)
