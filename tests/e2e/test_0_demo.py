"""`make run` (tools/demo.py) end to end with --duration, so the demo cannot rot: it brings the
local control plane up (or reuses it), installs the chart, runs the example policy's three pods
with a stream of jobs and the live view, and removes everything it made.

It runs first in the package, before the suite installs its own operator: the demo refuses to run
beside another operator (both would act on its policy). Local control plane only: on another
cluster this test is deselected (tests/e2e/conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.cluster.conftest import Cluster
from tests.e2e.kube import ROOT
from tests.e2e.record import ScenarioRecord

pytestmark = pytest.mark.e2e

DURATION_S = 12


@pytest.mark.timeout(420)
def test_make_run_demo(cluster: Cluster, record: ScenarioRecord) -> None:
    record.step(f"tools/demo.py --duration {DURATION_S}")
    started = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "-P",
            "tools/demo.py",
            "--duration",
            str(DURATION_S),
            "--interval",
            "2",
            "--jobs",
            "300",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "COLUMNS": "160"},  # the live view's tables, unwrapped
    )
    out = proc.stdout + proc.stderr
    record.figure("seconds", round(time.time() - started, 1))
    for line in out.splitlines():
        if re.match(r"\s+\d+\.\ds ", line):
            record.event("demo.step", line=line.strip())
    assert proc.returncode == 0, out[-4000:]

    # A progress line per step, each with its elapsed time.
    for step in (
        "the local control plane", "a private Redis on 127.0.0.1:", "helm install fleet-limiter-demo",
        "policy production, 3 limiter pods", "a stream of 300 jobs", "helm uninstall fleet-limiter-demo",
        "stopping Redis", "the local control plane keeps running",
    ):  # fmt: skip
        assert re.search(rf"^\s+\d+\.\ds .*{re.escape(step)}", out, re.M), f"no step {step!r}:\n{out[-4000:]}"
    assert len(re.findall(r"pod production-limiter-\S+ ready at http://127\.10\.", out)) == 3, out[-4000:]
    # The live view: every pod, every job type, the pools.
    assert "job types: in flight/slots" in out and "models: pool slots per instance" in out
    assert all(j in out for j in ("chat", "summary", "extraction", "evaluation", "backfill"))
    completed = int(re.search(r"job stream: (\d+) jobs completed", out).group(1))  # type: ignore[union-attr]
    record.figure("jobs_completed", completed, headline=f"{completed} jobs through 3 pods")
    assert completed > 20, out[-4000:]

    # Nothing left behind: namespace, policy, operator.
    cluster.kubectl(
        "wait", "--for=delete", "namespace/fleet-limiter-demo", "--timeout=90s", check=False, timeout=100
    )
    left = json.loads(cluster.kubectl("get", "namespaces", "-o", "json"))["items"]
    assert "fleet-limiter-demo" not in {n["metadata"]["name"] for n in left}
