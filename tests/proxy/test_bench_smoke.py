"""The proxy overhead benchmark runs in its smoke mode so it cannot rot (numbers are not checked)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.timeout(120)
def test_proxy_overhead_benchmark_smoke(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-P",
            str(ROOT / "bench" / "proxy_overhead.py"),
            "--smoke",
            "--results-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    doc = json.loads((tmp_path / "proxy_overhead-smoke.json").read_text())
    assert [r["concurrency"] for r in doc["levels"]] == [1, 10, 50]
    for row in doc["levels"]:
        assert row["direct"]["n"] > 0 and row["proxy"]["n"] > 0
        assert row["direct"]["errors"] == row["proxy"]["errors"] == 0
        assert row["ratio_p50"] > 0
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "proxy_overhead-smoke.png").stat().st_size > 1000
