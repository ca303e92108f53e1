"""The real `fleet-limiter` executable, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
EXE = Path(sys.executable).with_name("fleet-limiter")
TPM = "examples/tpm.yaml"


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


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("serve", ["[env FLEET_LIMITER_REDIS_URL]", "[default: redis://127.0.0.1:6379/0]", "[default: 8080]",
                   "[env FLEET_LIMITER_PORT]", "[default: 127.0.0.1]", "[default: info]"]),
        ("plan", ["[default: 1]"]),
        ("top", ["[default: 1.0]", "[default: live view]"]),
    ],
)  # fmt: skip
def test_help_shows_every_default(command: str, shown: list[str]) -> None:
    out = subprocess.run(
        [str(EXE), command, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"COLUMNS": "200", "PATH": "", "TERM": "dumb"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for item in shown:
        assert item in text, (item, out.stdout)
    assert " ." not in text  # no help text whose default was swallowed ("Redis URL .")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["serve", "--bogus"], "--bogus: no such option of 'fleet-limiter serve'; see 'fleet-limiter serve"),
        (["serve", "--prot", "80"], "--prot: no such option of 'fleet-limiter serve' (did you mean --port?)"),
        (["plan", "--policy"], "--policy: requires an argument; see 'fleet-limiter plan --help'"),
        (["plan"], "--policy: required; see 'fleet-limiter plan --help'"),
        (["bogus"], "No such command 'bogus'; see 'fleet-limiter --help'"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_naming_the_option(args: list[str], line: str) -> None:
    out = run(*args)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and line in lines[0], out.stderr
    assert "Possible options" not in out.stderr


@pytest.mark.parametrize(
    ("args", "first"),
    [
        # The policy file is what a user fixes first, then the name, the Redis URL, the port.
        (["serve", "--policy", "nope.yaml", "--port", "99999", "--redis", "foo://x"], "nope.yaml: no such"),
        (["serve", "--port", "99999", "--redis", "foo://x"], "--name: a policy name is needed"),
        (["serve", "--policy", TPM, "--port", "99999", "--redis", "foo://x"], "--redis: 'foo://x'"),
        (["serve", "--policy", TPM, "--port", "99999"], "--port: 99999 is not valid: 1 to 65535"),
        (["serve", "--policy", TPM, "--log-level", "loud"], "--log-level: 'loud' is not valid"),
        (["plan", "--policy", "nope.yaml", "--instances", "0"], "nope.yaml: no such policy file"),
        (["top"], "--url or --redis is needed"),
        (["top", "--url", "http://x", "--policy", "a/b"], "--policy: only with --redis"),
        (["top", "--redis", "foo://x", "--policy", "a/b"], "--redis: 'foo://x'"),
        (["top", "--url", "http://x", "--interval", "0"], "--interval: 0 is not valid"),
    ],
)  # fmt: skip
def test_checks_come_in_the_order_a_user_fixes_them(args: list[str], first: str) -> None:
    out = subprocess.run(
        [str(EXE), *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PATH": "", "COLUMNS": "200"},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and first in out.stderr, out.stderr


def test_top_once_exits_1_when_no_instance_answers() -> None:
    out = run("top", "--once", "--url", "http://127.0.0.1:9", "--url", "http://127.0.0.1:7")
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleet-limiter: error: no instance answered")
    assert "http://127.0.0.1:9" in lines[0] and "http://127.0.0.1:7" in lines[0]
