"""Uninstalling: what the chart's pre-delete check says, what releasing finalizers patches, the hook
Job the chart renders, and the command line's answers to bad input (no cluster needed). The whole
uninstall on a real API server is in tests/e2e/test_0_uninstall.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from limiter_operator.uninstall import FINALIZER, PolicyItem, finalizer_patch, refusal

from tests.operator.conftest import CHART
from tests.operator.support import OPERATOR_CLI, run


def item(ns: str, name: str, deleting: bool = False) -> PolicyItem:
    return PolicyItem(ns, name, deleting, (FINALIZER,))


@pytest.mark.parametrize(
    "policies, namespaces, lines",
    [
        (
            [item("team-b", "chat"), item("team-a", "tpm", deleting=True)],
            [],
            [
                "fleet-limiter-operator: refusing to uninstall: 2 RateLimitPolicies still exist; without the "
                "operator their finalizer would never run and their namespaces could not be deleted:",
                "  team-a/tpm (being deleted)",
                "  team-b/chat",
                "Delete them while the operator runs (it stops their pods and removes their Redis keys), "
                "then run helm uninstall again:",
                "  kubectl delete rlp --all --all-namespaces",
            ],
        ),
        (
            [item("team-a", "tpm"), item("team-a", "chat"), item("team-b", "x")],
            ["team-a", "team-b", "team-c"],
            [
                "fleet-limiter-operator: refusing to uninstall: 3 RateLimitPolicies still exist; without the "
                "operator their finalizer would never run and their namespaces could not be deleted:",
                "  team-a/chat",
                "  team-a/tpm",
                "  team-b/x",
                "Delete them while the operator runs (it stops their pods and removes their Redis keys), "
                "then run helm uninstall again:",
                "  kubectl delete rlp --all -n team-a",
                "  kubectl delete rlp --all -n team-b",
            ],
        ),
    ],
    ids=["every-namespace", "watched-namespaces"],
)
def test_refusal_lists_the_policies_and_the_command_that_deletes_them(
    policies: list[PolicyItem], namespaces: list[str], lines: list[str]
) -> None:
    assert refusal(policies, namespaces).splitlines() == lines


def test_refusal_of_one_policy_is_singular() -> None:
    assert "1 RateLimitPolicy still exists;" in refusal([item("a", "b")], [])


@pytest.mark.parametrize(
    "finalizers, patch",
    [
        ([FINALIZER], [{"op": "test", "path": "/metadata/finalizers", "value": [FINALIZER]},
                       {"op": "replace", "path": "/metadata/finalizers", "value": []}]),
        (["example.com/keep", FINALIZER], [
            {"op": "test", "path": "/metadata/finalizers", "value": ["example.com/keep", FINALIZER]},
            {"op": "replace", "path": "/metadata/finalizers", "value": ["example.com/keep"]}]),
        (["example.com/keep"], None),
        ([], None),
    ],
    ids=["ours", "ours-and-another", "another-only", "none"],
)  # fmt: skip
def test_releasing_removes_only_the_operators_finalizer(finalizers: list[str], patch: Any) -> None:
    assert finalizer_patch(finalizers) == patch


def test_a_policy_item_reads_what_it_needs_from_the_object() -> None:
    obj = {
        "metadata": {
            "namespace": "team-a",
            "name": "tpm",
            "deletionTimestamp": "2026-01-01T00:00:00Z",
            "finalizers": [FINALIZER],
        }
    }
    assert PolicyItem.from_object(obj) == PolicyItem("team-a", "tpm", True, (FINALIZER,))
    assert not PolicyItem.from_object({"metadata": {"namespace": "a", "name": "b"}}).deleting


@pytest.mark.parametrize(
    "args, message",
    [
        (["release-finalizers", "-n", "Team_A"], "--namespace: 'Team_A' is not a namespace name"),
        (["check-uninstall", "--wait", "-1"], "--wait: -1 is out of range: 0 to 3600 seconds"),
        (["check-uninstall", "--kubeconfig", "/nonexistent/kubeconfig"], "--kubeconfig: /nonexistent"),
        (["release-finalizers", "--kubeconfig", "EMPTY"], "no Kubernetes credentials"),
        (["bogus"], "invalid choice: 'bogus'"),
    ],
)
def test_bad_input_is_one_line_without_a_traceback(args: list[str], message: str, tmp_path: Path) -> None:
    empty = tmp_path / "kubeconfig"
    empty.write_text("")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    proc = subprocess.run([str(OPERATOR_CLI), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "error" in line]) == 1, proc.stderr


def test_an_unreachable_api_server_is_one_line(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    proc = subprocess.run(
        [str(OPERATOR_CLI), "release-finalizers", f"--kubeconfig={kubeconfig}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("fleet-limiter-operator: error: listing RateLimitPolicies: "), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


# -- the chart's hook ---------------------------------------------------------------------------------


def hook_job(helm: Path, *values: str) -> dict[str, Any]:
    """The one Job of ``helm template`` (helm renders hooks too)."""
    out = run([str(helm), "template", "fl", str(CHART), "-n", "fleet-system", *values])
    (job,) = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Job"]
    return dict(job)


def test_the_chart_checks_before_anything_is_uninstalled(helm: Path) -> None:
    job = hook_job(helm)
    assert job["metadata"]["name"] == "fl-fleet-limiter-uninstall-check"
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-delete"
    # helm prints a failed check's log, and leaves no Job behind either way.
    assert annotations["helm.sh/hook-output-log-policy"] == "hook-failed"
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {
        "before-hook-creation", "hook-succeeded", "hook-failed",
    }  # fmt: skip
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    # The operator's ServiceAccount may already list the policies it serves: no extra RBAC.
    assert pod["serviceAccountName"] == "fl-fleet-limiter"
    (container,) = pod["containers"]
    # The operator's own command (the local node runs it from the venv; the image has it too).
    assert container["command"] == [
        "python",
        "-P",
        "-m",
        "limiter_operator",
        "check-uninstall",
        "--wait",
        "60",
    ]
    assert container["image"] == "fleet-limiter:0.1.0"
    assert container["env"] == [{"name": "FLEET_LIMITER_OPERATOR_NAMESPACES", "value": ""}]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # Not an operator pod: the suites' "another operator runs" checks must not count it.
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "uninstall-check"


def test_the_check_looks_where_the_operator_serves(helm: Path) -> None:
    job = hook_job(
        helm, "--set", "operator.watchNamespaces={team-a,team-b}", "--set", "image.repository=reg.example/fl"
    )
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["env"] == [{"name": "FLEET_LIMITER_OPERATOR_NAMESPACES", "value": "team-a,team-b"}]
    assert container["image"] == "reg.example/fl:0.1.0"
