"""The Helm chart: lint, render, refuse impossible values, apply to a real API server, least privilege."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from limiter_operator.builders import MANAGER, POLICY_LABEL, PORT_NAME, labels

from tests.cluster.conftest import Cluster
from tests.operator.conftest import CHART, TEST_LABEL, Release, operator_pods
from tests.operator.support import run, wait_for

VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "external-redis": ["--set", "redis.url=redis://redis.infra:6379/0"],
    "namespaced": [
        "--set",
        "operator.watchNamespaces={team-a,team-b}",
        "--set",
        "operator.readSecrets=false",
    ],
    "standalone": ["--set", "operator.standalone=true", "--set", "redis.enabled=false"],
    "ha": ["--set", "operator.replicas=2", "--set", "limiter.image.repository=registry.example/fl"],
    "monitoring": [
        "--set", "dashboards.enabled=true",
        "--set", "serviceMonitor.enabled=true",
        "--set-string", "serviceMonitor.labels.release=kube-prometheus-stack",
        "--set", "serviceMonitor.scrapeTimeout=10s",
    ],
}  # fmt: skip


def template(helm: Path, *args: str, namespace: str = "fleet-system") -> Any:
    return run([str(helm), "template", "fl", str(CHART), "-n", namespace, *args], check=False)


def rendered(helm: Path, *args: str) -> list[dict[str, Any]]:
    out = template(helm, *args)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint(helm: Path, values: list[str]) -> None:
    out = run([str(helm), "lint", "--strict", str(CHART), *values], check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    "values, message",
    [
        (["--set", "operator.standalone=true", "--set", "operator.replicas=2"], "every replica would act"),
        (["--set", "serviceAccount.create=false"], "needs serviceAccount.name"),
        (["--set", "rbac.create=false"], "would have no permissions"),
        (
            ["--set", "serviceMonitor.enabled=true", "--set", "operator.metricsPort=0"],
            "set operator.metricsPort",
        ),
        (["--set", "operator.metricsPort=8081"], "need ports of their own"),
    ],
)
def test_impossible_combinations_fail_with_what_to_change(
    helm: Path, values: list[str], message: str
) -> None:
    out = template(helm, *values)
    assert out.returncode != 0
    assert message in out.stderr


@pytest.mark.parametrize(
    "values, message",
    [
        (["--set", "operator.bogus=1"], "additional properties 'bogus' not allowed"),
        (["--set", "redis.url=http://redis:6379"], "does not match pattern"),
        (["--set", "operator.logLevel=LOUD"], "operator/logLevel"),
        (["--set", "operator.watchNamespaces={Team_A}"], "does not match pattern"),
        (["--set", "limiter.resources.requests.gpu=1"], "additional properties 'gpu' not allowed"),
        (["--set", "dashboards.folder=x"], "additional properties 'folder' not allowed"),
        (["--set", "dashboards.labels.grafana_dashboard=1"], "dashboards/labels/grafana_dashboard"),
        (["--set", "serviceMonitor.interval=often"], "serviceMonitor/interval"),
        (["--set", "operator.metricsPort=70000"], "operator/metricsPort"),
    ],
)
def test_values_schema_rejects_unknown_and_invalid_values(
    helm: Path, values: list[str], message: str
) -> None:
    out = template(helm, *values)
    assert out.returncode != 0
    assert message in out.stderr


def test_every_object_is_labelled_and_every_pod_is_non_root_and_read_only(helm: Path) -> None:
    docs = rendered(helm)
    for doc in docs:
        labels = doc["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                    "app.kubernetes.io/version", "app.kubernetes.io/component"):  # fmt: skip
            assert key in labels, f"{doc['kind']} {doc['metadata']['name']} lacks {key}"
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {
        "fl-fleet-limiter-operator",
        "fl-fleet-limiter-redis",
    }
    for dep in deployments:
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            assert c["command"], "the local node runs container commands, never image entrypoints"


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    (operator,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")
    ]
    return {
        e["name"]: e.get("value", "") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }


def test_values_reach_the_operator_settings(helm: Path) -> None:
    env = env_of(rendered(helm))
    assert env["FLEET_LIMITER_DEFAULT_REDIS_URL"] == "redis://fl-fleet-limiter-redis.fleet-system.svc:6379/0"
    assert env["FLEET_LIMITER_OPERATOR_NAMESPACES"] == ""
    assert env["FLEET_LIMITER_LIMITER_IMAGE"] == "fleet-limiter:0.1.0"
    assert env["FLEET_LIMITER_OPERATOR_HEALTH_ADDRESS"] == "$(POD_IP):8081"
    assert env["FLEET_LIMITER_OPERATOR_METRICS_ADDRESS"] == "$(POD_IP):8082"
    env = env_of(rendered(helm, *VALUE_SETS["external-redis"], *VALUE_SETS["namespaced"], *VALUE_SETS["ha"]))
    assert env["FLEET_LIMITER_DEFAULT_REDIS_URL"] == "redis://redis.infra:6379/0"
    assert env["FLEET_LIMITER_OPERATOR_NAMESPACES"] == "team-a,team-b"
    assert env["FLEET_LIMITER_LIMITER_IMAGE"] == "registry.example/fl:0.1.0"


def test_in_chart_redis_only_without_an_external_url(helm: Path) -> None:
    def redis_objects(*values: str) -> list[str]:
        return [
            f"{d['kind']}/{d['metadata']['name']}"
            for d in rendered(helm, *values)
            if "redis" in d["metadata"]["name"]
        ]

    assert redis_objects() == [
        "PersistentVolumeClaim/fl-fleet-limiter-redis-data",
        "Service/fl-fleet-limiter-redis",
        "Deployment/fl-fleet-limiter-redis",
    ]
    assert redis_objects(*VALUE_SETS["external-redis"]) == []
    assert redis_objects("--set", "redis.enabled=false") == []
    (redis,) = [d for d in rendered(helm) if d["kind"] == "Deployment" and "redis" in d["metadata"]["name"]]
    assert "--appendonly" in redis["spec"]["template"]["spec"]["containers"][0]["command"]
    # The append-only file is on the claim by default, on an emptyDir without persistence.
    assert redis["spec"]["template"]["spec"]["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "fl-fleet-limiter-redis-data"}}
    ]
    (ephemeral,) = [
        d
        for d in rendered(helm, "--set", "redis.persistence.enabled=false")
        if d["kind"] == "Deployment" and "redis" in d["metadata"]["name"]
    ]
    assert ephemeral["spec"]["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]
    assert redis_objects("--set", "redis.persistence.enabled=false") == [
        "Service/fl-fleet-limiter-redis",
        "Deployment/fl-fleet-limiter-redis",
    ]


def test_rbac_is_namespaced_when_namespaces_are_listed(helm: Path) -> None:
    docs = rendered(helm, *VALUE_SETS["namespaced"])
    roles = [
        (d["kind"], d["metadata"].get("namespace")) for d in docs if d["kind"] in ("Role", "ClusterRole")
    ]
    assert sorted(roles, key=str) == sorted(
        [("Role", "team-a"), ("Role", "team-b"), ("ClusterRole", None)], key=str
    )
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert {g for r in cluster_role["rules"] for g in r["apiGroups"]} == {"kopf.dev"}  # peering only
    (role, _) = [d for d in docs if d["kind"] == "Role"]
    assert not [r for r in role["rules"] if "secrets" in r["resources"]]  # readSecrets=false


@pytest.mark.cluster
def test_notes_tell_the_next_command(cluster: Cluster, helm: Path) -> None:
    # helm's client-side dry run still asks the API server for its version: a cluster is needed.
    def notes(*values: str) -> str:
        out = run(
            [str(helm), "install", "fl", str(CHART), "--dry-run=client", "-n", "fleet-system",
             f"--kubeconfig={cluster.kubeconfig}", *values],
            check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return str(out.stdout.split("NOTES:", 1)[1])

    text = notes()
    assert "kubectl apply -n default -f" in text and "kubectl get rlp" in text
    # How to uninstall: the policies first, then the release; the finalizers when the operator is gone.
    assert "kubectl delete rlp --all --all-namespaces\n  helm uninstall fl -n fleet-system" in text
    assert "fleet-limiter-operator release-finalizers" in text
    assert "the in-chart Redis" in text
    assert "WARNING: no default Redis" in notes("--set", "redis.enabled=false")
    assert "dashboard" not in text
    assert "ConfigMap fl-fleet-limiter-dashboards" in notes("--set", "dashboards.enabled=true")


# -- against the API server ------------------------------------------------------------------------------


SERVICEMONITOR_CRD = Path(__file__).with_name("servicemonitor-crd.yaml")


@pytest.fixture(scope="session")
def servicemonitor_crd(cluster: Cluster) -> Iterator[None]:
    """The ServiceMonitor CRD, for the dry run of the chart's ServiceMonitors. A cluster with the
    Prometheus Operator has the real one (used as is); otherwise the tests' minimal stand-in
    (servicemonitor-crd.yaml: the fields the chart uses, upstream's types, unknown fields refused)
    is installed for the session and removed after it."""
    name = "servicemonitors.monitoring.coreos.com"
    found = cluster.kubectl("get", "crd", name, "-o", "json", check=False)
    ours = not found or TEST_LABEL in (json.loads(found)["metadata"].get("labels") or {})
    if ours:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(SERVICEMONITOR_CRD))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s")
        # The API server serves a new CRD's resource a moment after it is Established.
        wait_for("the ServiceMonitor resource to be served", lambda: cluster.kubectl(
            "api-resources", "--api-group=monitoring.coreos.com", "-o", "name", check=False
        ).strip(), timeout=30)  # fmt: skip
    yield
    if ours:
        cluster.kubectl("delete", "crd", name, "--wait=false", check=False)


@pytest.mark.cluster
@pytest.mark.parametrize("name", VALUE_SETS.keys())
def test_rendered_chart_passes_a_server_side_dry_run(
    cluster: Cluster, helm: Path, release: Release, name: str, request: pytest.FixtureRequest
) -> None:
    # The release's namespace exists; the namespaced set's Roles go to namespaces of their own.
    values = VALUE_SETS[name]
    if "serviceMonitor.enabled=true" in values:
        request.getfixturevalue("servicemonitor_crd")
    if name == "namespaced":
        values = ["--set", f"operator.watchNamespaces={{{release.namespace}}}"]
    out = template(helm, *values, "--set", "fullnameOverride=dryrun", namespace=release.namespace)
    assert out.returncode == 0, out.stderr
    applied = run(
        [str(cluster.kubectl_path), f"--kubeconfig={cluster.kubeconfig}", "apply", "--dry-run=server",
         "--validate=strict", "-n", release.namespace, "-f", "-"],
        input=out.stdout, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    assert "(server dry run)" in applied.stdout


@pytest.mark.cluster
def test_crd_in_the_cluster_is_the_generated_one(cluster: Cluster, release: Release) -> None:
    installed = json.loads(cluster.kubectl("get", "crd", "ratelimitpolicies.fleetlimiter.io", "-o", "json"))
    generated = yaml.safe_load((CHART / "crds" / "ratelimitpolicies.yaml").read_text())
    want, have = generated["spec"]["versions"][0], installed["spec"]["versions"][0]
    assert have["schema"] == want["schema"]
    assert have["additionalPrinterColumns"] == want["additionalPrinterColumns"]
    assert installed["spec"]["names"]["shortNames"] == ["rlp"]
    assert any(
        c["type"] == "Established" and c["status"] == "True" for c in installed["status"]["conditions"]
    )


@pytest.mark.cluster
def test_operator_runs_as_the_charts_service_account(cluster: Cluster, release: Release) -> None:
    (pod,) = operator_pods(cluster, release)
    assert pod["spec"]["serviceAccountName"] == release.service_account
    assert pod["status"]["containerStatuses"][0]["ready"]


CAN = [
    ("watch", "ratelimitpolicies.fleetlimiter.io", ""),
    ("patch", "ratelimitpolicies.fleetlimiter.io", "status"),
    ("create", "deployments.apps", ""),
    ("delete", "deployments.apps", ""),
    ("patch", "poddisruptionbudgets.policy", ""),
    ("create", "events", ""),
    ("get", "secrets", ""),
]
CANNOT = [
    ("delete", "ratelimitpolicies.fleetlimiter.io", ""),
    ("create", "ratelimitpolicies.fleetlimiter.io", ""),
    ("list", "secrets", ""),
    ("create", "pods", ""),
    ("delete", "services", ""),
    ("create", "serviceaccounts", "token"),
    ("create", "rolebindings.rbac.authorization.k8s.io", ""),
    ("list", "nodes", ""),
    ("delete", "namespaces", ""),
]


@pytest.mark.cluster
@pytest.mark.parametrize(
    "verb, resource, sub", CAN + CANNOT, ids=[f"{v}-{r}-{s}" for v, r, s in CAN + CANNOT]
)
def test_operator_rbac_is_least_privilege(
    cluster: Cluster, release: Release, verb: str, resource: str, sub: str
) -> None:
    args = ["auth", "can-i", verb, resource, "-n", "default",
            f"--as=system:serviceaccount:{release.namespace}:{release.service_account}"]  # fmt: skip
    if sub:
        args.append(f"--subresource={sub}")
    answer = cluster.kubectl(*args, check=False).strip()
    assert answer == ("yes" if (verb, resource, sub) in CAN else "no")


@pytest.mark.cluster
def test_operator_may_touch_only_its_own_peering_object(cluster: Cluster, release: Release) -> None:
    who = f"--as=system:serviceaccount:{release.namespace}:{release.service_account}"
    own_name = f"clusterkopfpeerings.kopf.dev/{release.name}-fleet-limiter"
    own = cluster.kubectl("auth", "can-i", "patch", own_name, who, check=False).strip()
    other = cluster.kubectl(
        "auth", "can-i", "patch", "clusterkopfpeerings.kopf.dev/x", who, check=False
    ).strip()
    assert (own, other) == ("yes", "no")
    peering = json.loads(
        cluster.kubectl("get", "clusterkopfpeering", f"{release.name}-fleet-limiter", "-o", "json")
    )
    assert len(peering.get("status") or {}) == 1, "the running operator announces itself"


# -- monitoring: the operator's metrics port, the dashboard, the ServiceMonitors ---------------------------


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (operator,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")
    ]
    return operator["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_the_operator_serves_metrics_on_its_own_port_unless_turned_off(helm: Path) -> None:
    container = operator_container(rendered(helm))
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 8081, "metrics": 8082}
    container = operator_container(rendered(helm, "--set", "operator.metricsPort=9100"))
    assert {"name": "FLEET_LIMITER_OPERATOR_METRICS_ADDRESS", "value": "$(POD_IP):9100"} in container["env"]
    container = operator_container(rendered(helm, "--set", "operator.metricsPort=0"))
    assert [p["name"] for p in container["ports"]] == ["health"]
    assert not [e for e in container["env"] if e["name"] == "FLEET_LIMITER_OPERATOR_METRICS_ADDRESS"]


def test_no_dashboard_nor_servicemonitor_by_default(helm: Path) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered(helm)}
    assert not [k for k in kinds if k[0] in ("ConfigMap", "ServiceMonitor") or "metrics" in k[1]]


def test_the_dashboard_configmap_carries_the_charts_dashboard(helm: Path) -> None:
    docs = rendered(helm, "--set", "dashboards.enabled=true")
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "fleet-system"
    shipped = json.loads((CHART / "dashboards" / "fleet-limiter.json").read_text())
    assert json.loads(cm["data"]["fleet-limiter.json"]) == shipped
    docs = rendered(
        helm, "--set", "dashboards.enabled=true", "--set", "dashboards.namespace=monitoring",
        "--set", "dashboards.annotations.grafana_folder=LLM", "--set-string", "dashboards.labels.team=ml",
    )  # fmt: skip
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    assert {"grafana_dashboard": "1", "team": "ml"}.items() <= cm["metadata"]["labels"].items()


def _matches(selector: dict[str, str], obj_labels: dict[str, str]) -> bool:
    return selector.items() <= obj_labels.items()


def test_the_servicemonitors_select_the_operator_and_every_limiter_service(helm: Path) -> None:
    docs = rendered(helm, *VALUE_SETS["monitoring"])
    monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceMonitor"}
    assert monitors.keys() == {"fl-fleet-limiter-operator", "fl-fleet-limiter-limiters"}
    for sm in monitors.values():
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (endpoint,) = sm["spec"]["endpoints"]
        assert (endpoint["path"], endpoint["interval"], endpoint["scrapeTimeout"]) == (
            "/metrics",
            "30s",
            "10s",
        )

    # The operator: through the metrics Service, onto the container's metrics port.
    operator_sm = monitors["fl-fleet-limiter-operator"]
    assert operator_sm["spec"]["namespaceSelector"] == {"matchNames": ["fleet-system"]}
    assert operator_sm["spec"]["endpoints"][0]["honorLabels"] is True  # the policies' namespace/policy labels
    wanted = operator_sm["spec"]["selector"]["matchLabels"]
    (service,) = [d for d in docs if d["kind"] == "Service" and _matches(wanted, d["metadata"]["labels"])]
    (port,) = service["spec"]["ports"]
    assert port["name"] == operator_sm["spec"]["endpoints"][0]["port"] == "metrics"
    (operator,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")
    ]
    assert _matches(service["spec"]["selector"], operator["spec"]["template"]["metadata"]["labels"])
    assert port["targetPort"] in {p["name"] for p in operator_container(docs)["ports"]}

    # The limiters: the Services the operator builds for every policy (operator/builders.py), in any
    # namespace, with the policy as the dashboard's `policy` label.
    limiter_sm = monitors["fl-fleet-limiter-limiters"]
    assert limiter_sm["spec"]["namespaceSelector"] == {"any": True}
    selector = limiter_sm["spec"]["selector"]["matchLabels"]
    for policy in ("tpm", "a-much-longer-policy-name-" + "x" * 60):
        assert _matches(selector, labels(policy))
    assert selector["app.kubernetes.io/managed-by"] == MANAGER
    (endpoint,) = limiter_sm["spec"]["endpoints"]
    assert endpoint["port"] == PORT_NAME
    (relabel,) = endpoint["relabelings"]
    source = "__meta_kubernetes_service_label_" + "".join(c if c.isalnum() else "_" for c in POLICY_LABEL)
    assert (relabel["sourceLabels"], relabel["targetLabel"]) == ([source], "policy")
    # Nothing else of the release is scraped as a limiter.
    assert not [d for d in docs if d["kind"] == "Service" and _matches(selector, d["metadata"]["labels"])]

    docs = rendered(
        helm, *VALUE_SETS["monitoring"], *VALUE_SETS["namespaced"], "--set", "serviceMonitor.namespace=mon"
    )
    monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceMonitor"}
    assert monitors["fl-fleet-limiter-limiters"]["spec"]["namespaceSelector"] == {
        "matchNames": ["team-a", "team-b"]
    }
    assert {sm["metadata"]["namespace"] for sm in monitors.values()} == {"mon"}
    assert monitors["fl-fleet-limiter-operator"]["spec"]["namespaceSelector"] == {
        "matchNames": ["fleet-system"]
    }
