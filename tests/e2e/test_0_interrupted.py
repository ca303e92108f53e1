"""A run killed after its install leaves its operator, policy and pods behind; the next run removes
them (found by label) before its first step or test, and succeeds.

- ``make run`` (tools/demo.py) killed with SIGKILL once its fleet is ready; the next demo cleans up
  what it left (namespace, operator, policy, pods, its Redis) and runs.
- The e2e suite killed (its whole process group, as a time limit does) during its first scenario;
  the next run's first test is the demo, which refuses to run beside another operator: it passes
  because the suite sweeps before whichever test comes first.

Local control plane only (the demo needs it), like test_0_demo.py, and before the package's install.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from tests.cluster.conftest import Cluster
from tests.e2e.conftest import Tools
from tests.e2e.kube import E2E_LABEL, ROOT, other_operators
from tests.e2e.record import ScenarioRecord
from tests.operator.support import wait_for

pytestmark = pytest.mark.e2e

DEMO_NAMESPACE = "fleet-limiter-demo"
REDIS_PID = ROOT / ".run" / "demo" / "redis.pid"


def start(argv: list[str], log: Path) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """A command in its own process group, its output in ``log``."""
    out = log.open("wb")
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    return proc, out


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the whole group: no clean-up runs."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def namespaces(cluster: Cluster, selector: str) -> list[str]:
    out = cluster.kubectl("get", "namespaces", "-l", selector, "-o", "json")
    return sorted(n["metadata"]["name"] for n in json.loads(out)["items"])


def terminating(cluster: Cluster) -> list[str]:
    items = json.loads(cluster.kubectl("get", "namespaces", "-o", "json"))["items"]
    return [n["metadata"]["name"] for n in items if n.get("status", {}).get("phase") == "Terminating"]


def demo(*args: str) -> list[str]:
    return [sys.executable, "-P", "tools/demo.py", "--interval", "2", *args]


def alive(pid: int) -> bool:
    """A redis-server runs with that pid (its command line reads "redis-server HOST:PORT")."""
    try:
        program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].split(b" ")[0]
    except OSError:
        return False
    return Path(program.decode(errors="replace")).name == "redis-server"


@pytest.mark.timeout(600)
def test_an_interrupted_demo_is_cleaned_up_by_the_next(
    cluster: Cluster, swept: Tools, record: ScenarioRecord, tmp_path: Path
) -> None:
    record.step("tools/demo.py, killed once its three pods are ready")
    proc, out = start(demo("--duration", "600"), tmp_path / "first.log")
    try:
        wait_for(
            "the first demo's fleet",
            lambda: (
                (tmp_path / "first.log").read_text().count(" ready at http://") == 3
                or proc.poll() is not None
            ),
            timeout=300,
            interval=0.5,
        )
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        kill_group(proc)
        out.close()
    # What it left: its namespace (labelled), operator, policy and pods, and its Redis.
    assert namespaces(cluster, "fleet-limiter-demo") == [DEMO_NAMESPACE]
    assert other_operators(cluster), "the killed demo's operator is not running"
    assert cluster.kubectl("get", "rlp", "-n", DEMO_NAMESPACE, "-o", "name").strip()
    stale_redis = int(REDIS_PID.read_text())
    assert alive(stale_redis)

    record.step("tools/demo.py again, to the end")
    started = time.monotonic()
    second = subprocess.run(
        demo("--duration", "6", "--jobs", "60"), cwd=ROOT, capture_output=True, text=True, timeout=480,
        env={**os.environ, "COLUMNS": "160"},
    )  # fmt: skip
    record.figure("second_run_s", round(time.monotonic() - started, 1))
    text = second.stdout + second.stderr
    assert second.returncode == 0, text[-4000:]
    assert f"removing what an interrupted demo left in namespace {DEMO_NAMESPACE}" in text, text[-4000:]
    assert f"stopping the Redis of an interrupted demo (pid {stale_redis})" in text, text[-4000:]
    assert "job stream: " in text
    assert not alive(stale_redis)
    cluster.kubectl(
        "wait", "--for=delete", f"namespace/{DEMO_NAMESPACE}", "--timeout=90s", check=False, timeout=100
    )
    assert namespaces(cluster, "fleet-limiter-demo") == []
    assert other_operators(cluster) == []
    assert terminating(cluster) == []


@pytest.mark.timeout(600)
def test_an_interrupted_suite_is_cleaned_up_before_the_next_runs_first_test(
    cluster: Cluster, swept: Tools, record: ScenarioRecord, tmp_path: Path
) -> None:
    record.step("pytest tests/e2e/test_1_happy_path.py, killed once its policy exists")
    suite = [sys.executable, "-P", "-m", "pytest", "-p", "no:cacheprovider", "-s"]
    proc, out = start([*suite, "tests/e2e/test_1_happy_path.py"], tmp_path / "first.log")
    try:

        def policy_applied() -> bool:
            if proc.poll() is not None:
                return True
            return any(
                cluster.kubectl("get", "rlp", "-n", ns, "-o", "name", check=False).strip()
                for ns in namespaces(cluster, f"{E2E_LABEL}=policies")
            )

        wait_for("the first run's policy", policy_applied, timeout=300, interval=0.5)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        kill_group(proc)
        out.close()
    left = namespaces(cluster, E2E_LABEL)
    assert any(n.startswith("fleet-e2e-") for n in left), left
    stale = other_operators(cluster)
    assert stale and all(s.startswith("fleet-e2e-") for s in stale), stale

    record.step("pytest tests/e2e/test_0_demo.py: its first (and only) test is the demo")
    started = time.monotonic()
    second = subprocess.run(
        [*suite, "tests/e2e/test_0_demo.py"], cwd=ROOT, capture_output=True, text=True, timeout=560,
    )  # fmt: skip
    record.figure("second_run_s", round(time.monotonic() - started, 1))
    text = second.stdout + second.stderr
    assert second.returncode == 0, text[-4000:]
    assert "1 passed" in text, text[-4000:]
    assert "removing what an interrupted run left in " in text, text[-4000:]
    assert not set(left) & set(namespaces(cluster, E2E_LABEL)), "the interrupted run's namespaces are left"
    assert other_operators(cluster) == []
    assert terminating(cluster) == []
