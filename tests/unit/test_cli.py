"""The real `fleet-limiter` executable, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
EXE = Path(sys.executable).with_name("fleet-limiter")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_plan_json_has_the_allocation_endpoint_shape() -> None:
    out = run("plan", "--policy", "examples/tpm.yaml", "--instances", "2", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["allocation"]["instanceCount"] == 2
    assert doc["allocation"]["pools"]["model-alpha"]["totalSlots"] == 6
    assert doc["slotsByJobTypeAndModel"]["A"]["model-alpha"]["slots"] == 3
    assert doc["slotsByJobTypeAndModel"]["B"]["model-alpha"]["slots"] == 4
    assert doc["slotsByJobTypeAndModel"]["A"]["model-alpha"]["tokensPerMinute"] == 50000


@pytest.mark.parametrize("n,slots", [(1, 10), (2, 5), (3, 3)])
def test_plan_scales_with_instances(tmp_path: Path, n: int, slots: int) -> None:
    policy = tmp_path / "scale.yaml"
    policy.write_text(
        "models: [{name: scale-model, limits: {tokensPerMinute: 100000}}]\n"
        "jobTypes: [{name: scaleJob, ratio: 1.0, estimate: {tokens: 10000}}]\n"
    )
    doc = json.loads(run("plan", "--policy", str(policy), "--instances", str(n), "--json").stdout)
    assert doc["slotsByJobTypeAndModel"]["scaleJob"]["scale-model"]["slots"] == slots


def test_plan_table_names_slots_and_binding_limit() -> None:
    out = run("plan", "--policy", "examples/production.yaml", "--instances", "3")
    assert out.returncode == 0, out.stderr
    assert "chat (fixed)" in out.stdout and "TPM" in out.stdout and "concurrent" in out.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "models: [{name: a, limits: {tokensPerMinute: 10}}]\njobTypes: [{name: x, ratio: 0.5, "
            "estimate: {tokens: 1}}]\n",
            "spec.jobTypes[*].ratio: ratios sum to 0.5",
        ),
        ("models: [\n", "not valid YAML or JSON"),
        ("models: [{name: a, limits: {}}]\njobTypes: [{name: x, ratio: 1}]\n", "spec.models[0].limits"),
    ],
)
def test_bad_policy_exits_2_with_one_line(tmp_path: Path, content: str, message: str) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text(content)
    out = run("plan", "--policy", str(policy), "--instances", "1")
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr


def test_missing_file_and_bad_instances() -> None:
    out = run("plan", "--policy", "nope.yaml")
    assert (
        out.returncode == 2 and out.stderr.strip() == "fleet-limiter: error: nope.yaml: no such policy file"
    )
    out = run("plan", "--policy", "examples/tpm.yaml", "--instances", "0")
    assert out.returncode == 2 and "--instances: 0 is not valid" in out.stderr
