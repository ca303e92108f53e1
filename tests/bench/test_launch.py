"""Helper processes of the benchmarks cannot import the repo's operator/ in place of the standard
library's `operator` (a venv's `python -m pip` run from the repo root did, and `make bench` failed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.peers import install

ROOT = Path(__file__).parents[2]
PROBE = "import operator, os; print(operator.__file__); print(os.getcwd())"


def test_install_steps_run_outside_the_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_LIMITER_PEERS_CACHE", str(tmp_path / "peers"))
    monkeypatch.chdir(ROOT)
    log = tmp_path / "peers" / "logs" / "probe.log"
    # Without -P: the working directory and PYTHONSAFEPATH must be enough on their own.
    install._run([sys.executable, "-c", PROBE], log)
    module, cwd = log.read_text().split()
    assert not module.startswith(str(ROOT)), module
    assert not cwd.startswith(str(ROOT)), cwd
