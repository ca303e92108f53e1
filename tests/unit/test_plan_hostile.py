"""`fleet-limiter plan` on hostile policies: one line and exit code 2, never a traceback, never a
silent default (issue: never over-admit, bounded inputs). The fixed cases are what a new user
found; hypothesis then mutates a valid policy at random, through the real executable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXE = Path(sys.executable).with_name("fleet-limiter")
VALID: dict[str, Any] = {
    "models": [{"name": "m", "limits": {"tokensPerMinute": 100000, "maxConcurrentRequests": 10}}],
    "jobTypes": [
        {"name": "a", "ratio": 0.5, "estimate": {"tokens": 1000}},
        {"name": "b", "ratio": 0.5, "estimate": {"tokens": 500}},
    ],
    "instance": {"heartbeatSeconds": 1, "instanceTimeoutSeconds": 5},
}


def plan(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), "plan", "--policy", str(path), "--instances", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        errors="backslashreplace",
    )


def assert_one_line_or_plan(out: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    assert out.returncode in (0, 2), (out.returncode, out.stderr)
    if out.returncode == 2:
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fleet-limiter: error: "), out.stderr


def with_value(path: list[Any], value: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(VALID))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (json.dumps(with_value(["models", 0, "limits", "tokensPerMinute"], 1e309)), "tokensPerMinute"),
        (json.dumps(with_value(["models", 0, "limits", "tokensPerMinute"], 2**52 + 1)), "tokensPerMinute"),
        ('{"models": ' + "[" * 3000 + "]" * 3000 + "}", "nested too deeply"),
        ("models:\n" + "  " * 1 + "- " * 2000 + "x\n", "policy"),
        (json.dumps(with_value(["jobTypes", 0, "name"], "a\ud800")), "jobTypes[0].name"),
        (json.dumps(with_value(["jobTypes", 0, "name"], "a\x07b")), "printable"),
        (json.dumps(with_value(["jobTypes", 0, "ratio"], "0.5")), "jobTypes[0].ratio"),
        (
            json.dumps(with_value(["models", 0, "limits", "maxConcurrentRequests"], 10.0)),
            "maxConcurrentRequests",
        ),
        (json.dumps(with_value(["instance", "heartbeatSeconds"], 1e-30)), "heartbeatSeconds"),
        (json.dumps(with_value(["instance", "leaseTimeoutSeconds"], 0.001)), "leaseTimeoutSeconds"),
        (
            json.dumps(
                {
                    **VALID,
                    "jobTypes": [
                        {**VALID["jobTypes"][0], "ratio": 1},
                        {**VALID["jobTypes"][1], "ratio": 1e-30},
                    ],
                }
            ),
            "ratios sum to 1.000000000000000000000000000001",
        ),
    ],
)
def test_hostile_policy_is_one_line(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "hostile.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    out = plan(path)
    assert_one_line_or_plan(out)
    assert out.returncode == 2 and says in out.stderr, out.stderr


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
PATHS = [
    ["models", 0, "name"],
    ["models", 0, "limits"],
    ["models", 0, "limits", "tokensPerMinute"],
    ["models", 0, "limits", "maxConcurrentRequests"],
    ["jobTypes", 0, "ratio"],
    ["jobTypes", 1, "estimate"],
    ["jobTypes", 1, "estimate", "tokens"],
    ["jobTypes", 0, "models"],
    ["jobTypes", 0, "queue"],
    ["instance", "heartbeatSeconds"],
    ["instance"],
    ["models"],
    ["defaultJobType"],
]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(PATHS), value=JSON)
def test_any_mutation_of_a_policy_is_a_plan_or_one_line(tmp_path: Path, where: list[Any], value: Any) -> None:
    path = tmp_path / "mutated.json"
    path.write_text(json.dumps(with_value(where, value)), encoding="utf-8", errors="surrogatepass")
    assert_one_line_or_plan(plan(path))
