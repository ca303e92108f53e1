"""The suite's own settings and the install it makes on each kind of cluster, checked without a
cluster: the kind path cannot run on a machine without Docker, so what it hands to Helm is rendered
here with `helm template` against the chart's schema."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import conftest as cluster_conftest
from tests.e2e.kube import CHART, ROOT, DirectAccess, E2EConfigError, Settings, chart_values


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, Settings("local", "direct", "fleet-limiter:e2e", 50)),
        (
            {"FLEET_E2E_CLUSTER": "kubeconfig"},
            Settings("kubeconfig", "api-proxy", "fleet-limiter:e2e", 50),
        ),
        (
            {
                "FLEET_E2E_CLUSTER": "kubeconfig",
                "FLEET_E2E_IMAGE": "reg.example/fl:1.2",
                "FLEET_E2E_SCALE_PODS": "8",
            },
            Settings("kubeconfig", "api-proxy", "reg.example/fl:1.2", 8),
        ),
        (
            {"FLEET_E2E_POD_ACCESS": "api-proxy"},
            Settings("local", "api-proxy", "fleet-limiter:e2e", 50),
        ),
        (
            {"FLEET_E2E_CLUSTER": "kubeconfig", "FLEET_E2E_REDIS_IMAGE": "fleet-limiter/redis:7.0-bookworm"},
            Settings("kubeconfig", "api-proxy", "fleet-limiter:e2e", 50, "fleet-limiter/redis:7.0-bookworm"),
        ),
        (
            {"FLEET_E2E_CLUSTER": "kubeconfig", "FLEET_E2E_CONTAINERS": "1"},
            Settings("kubeconfig", "api-proxy", "fleet-limiter:e2e", 50, "", True),
        ),
    ],
)
def test_settings_from_the_environment(env: dict[str, str], expected: Settings) -> None:
    assert Settings.from_env(env) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLEET_E2E_CLUSTER": "kind"}, "FLEET_E2E_CLUSTER: 'kind' is not valid: local or kubeconfig"),
        ({"FLEET_E2E_POD_ACCESS": "proxy"}, "FLEET_E2E_POD_ACCESS: 'proxy' is not valid"),
        ({"FLEET_E2E_IMAGE": "reg.example:5000/fl"}, "FLEET_E2E_IMAGE: 'reg.example:5000/fl' is not valid"),
        ({"FLEET_E2E_SCALE_PODS": "1"}, "FLEET_E2E_SCALE_PODS: '1' is not valid"),
        ({"FLEET_E2E_CLUSTER": "kubeconfig", "FLEET_E2E_CONTAINERS": "yes"}, "FLEET_E2E_CONTAINERS: 'yes'"),
        ({"FLEET_E2E_CONTAINERS": "1"}, "FLEET_E2E_CONTAINERS: 1 needs FLEET_E2E_CLUSTER=kubeconfig"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(E2EConfigError, match="^" + message.replace("(", r"\(")):
        Settings.from_env(env)


def test_direct_access_refuses_addresses_off_loopback() -> None:
    pod = {"metadata": {"name": "p"}, "status": {"podIP": "127.10.0.7"}}
    assert DirectAccess().url(pod) == "http://127.10.0.7:8080"
    with pytest.raises(AssertionError, match="not a loopback address: set FLEET_E2E_POD_ACCESS=api-proxy"):
        DirectAccess().url({"metadata": {"name": "p"}, "status": {"podIP": "10.244.0.5"}})


def render(values: list[str]) -> list[dict[str, Any]]:
    helm = Path(cluster_conftest._cluster_env()["bin"]) / "helm"
    assert helm.exists(), f"{helm} is missing: run `make cluster-build`"
    proc = subprocess.run(
        [str(helm), "template", "e2e-x", str(CHART), "-n", "fleet-e2e-x", *values],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def operator_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_the_kind_install_renders_with_the_in_chart_redis_and_the_loaded_image() -> None:
    redis_image = "fleet-limiter/redis:7.0-bookworm"
    docs = render(
        chart_values(Settings("kubeconfig", "api-proxy", "fleet-limiter:e2e", 50, redis_image), None)
    )
    env = operator_env(docs)
    assert env["FLEET_LIMITER_LIMITER_IMAGE"] == "fleet-limiter:e2e"
    assert (
        env["FLEET_LIMITER_DEFAULT_REDIS_URL"] == "redis://e2e-x-fleet-limiter-redis.fleet-e2e-x.svc:6379/0"
    )
    assert (env["FLEET_LIMITER_LIMITER_CPU_REQUEST"], env["FLEET_LIMITER_LIMITER_MEMORY_REQUEST"]) == (
        "10m",
        "64Mi",
    )
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} >= {
        ("Deployment", "e2e-x-fleet-limiter-redis"),
        ("Service", "e2e-x-fleet-limiter-redis"),
    }
    images = {
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"fleet-limiter:e2e", redis_image}  # the two images tools/kind/kind-up.sh loads
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == "e2e-x-fleet-limiter-redis-data"


def test_the_local_install_renders_with_an_external_redis() -> None:
    docs = render(chart_values(Settings(), "redis://127.0.0.1:6399/0"))
    assert operator_env(docs)["FLEET_LIMITER_DEFAULT_REDIS_URL"] == "redis://127.0.0.1:6399/0"
    assert not [d for d in docs if d["metadata"]["name"].endswith("-redis")]


def test_the_kind_scripts_parse_and_name_the_images_they_build() -> None:
    for script in sorted((ROOT / "tools" / "kind").glob("*.sh")):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"
    names = {
        what: subprocess.run(
            ["bash", str(ROOT / "tools" / "kind" / "images.sh"), what],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for what in ("name", "redis-name")
    }
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert names == {
        "name": f"fleet-limiter:{chart['appVersion']}",
        "redis-name": "fleet-limiter/redis:7.0-bookworm",
    }
    e2e = (ROOT / "tools" / "kind" / "e2e.sh").read_text()
    assert "FLEET_E2E_REDIS_IMAGE=" in e2e and "FLEET_E2E_IMAGE=" in e2e


def test_the_container_scenarios_are_selected_only_by_their_setting() -> None:
    """On the local control plane the ``containers`` scenarios are deselected (counted as such), never
    skipped; FLEET_E2E_CONTAINERS=1 (tools/kind/e2e.sh) selects them."""
    argv = [".venv/bin/python", "-P", "-m", "pytest", "tests/e2e", "--collect-only", "-q", "-m", "containers"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_E2E_")}
    local = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=base, timeout=120)
    assert "no tests collected" in local.stdout or " 0 selected" in local.stdout, local.stdout[-500:]
    kind = {**base, "FLEET_E2E_CLUSTER": "kubeconfig", "FLEET_E2E_CONTAINERS": "1"}
    selected = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=kind, timeout=120)
    names = [line for line in selected.stdout.splitlines() if "::" in line]
    assert {n.split("::")[0] for n in names} == {
        "tests/e2e/test_0_chart_defaults.py", "tests/e2e/test_c1_node_loss.py", "tests/e2e/test_c2_memory.py",
        "tests/e2e/test_c3_redis_pod.py",
    }, selected.stdout[-500:]  # fmt: skip
    assert len(names) == 5
