"""Every benchmark, one after the other, with progress lines (what `make bench` runs).

    python -P bench/run_all.py [--smoke] [--peers LIST] [--results-dir DIR]

1. install or build the peers into ~/.cache/fleet-limiter/peers (bench/peers/install.py; minutes
   the first time, nothing afterwards);
2. bench/fleet.py: fleet-limiter's own latency, decisions/s, convergence, Redis commands per job;
3. bench/proxy_overhead.py: the LLM proxy's added latency against calling the stand-in directly;
4. bench/credits.py: consume latency and throughput, Redis round trips per consume;
   bench/admission.py: the job-type manager's cost against the depth of its queues;
   bench/fleet_scale.py: 10 to 1,000 instances on one Redis (cold start, join, leave, idle load);
5. bench/peers/compare.py: fleet-limiter side by side with envoyproxy/ratelimit, the LiteLLM proxy
   and the limits library.

``--smoke`` runs tiny durations and, unless ``--peers`` says otherwise, only the peers that need no
build (fleet-limiter and limits). Exits non-zero if any step failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def step(title: str, cmd: list[str], started: float) -> bool:
    print(f"[{time.monotonic() - started:7.1f}s] == {title}: {' '.join(cmd[1:])}", flush=True)
    # -P and PYTHONSAFEPATH: no step, nor a Python it starts, has the repo (whose operator/ folder
    # would shadow the standard library's) on sys.path through its working directory.
    code = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONSAFEPATH": "1"}).returncode
    ok = code == 0
    print(
        f"[{time.monotonic() - started:7.1f}s] == {title}: {'done' if ok else f'FAILED (exit {code})'}",
        flush=True,
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description="run every benchmark")
    parser.add_argument("--smoke", action="store_true", help="tiny durations, to check everything runs")
    parser.add_argument("--peers", default=None, help="passed to bench/peers/compare.py (default: all)")
    parser.add_argument("--results-dir", type=Path, default=None, help="default bench/results")
    args = parser.parse_args()
    py = [sys.executable, "-P"]
    common = ["--smoke"] if args.smoke else []
    if args.results_dir is not None:
        common += ["--results-dir", str(args.results_dir)]
    peers = args.peers or ("fleet-limiter,limits" if args.smoke else "all")
    wanted = (
        ["limits", "litellm", "ratelimit"]
        if peers == "all"
        else [p for p in peers.split(",") if p != "fleet-limiter"]
    )
    started = time.monotonic()
    results = {}
    results["install peers"] = step(
        "install peers", [*py, str(BENCH / "peers" / "install.py"), *wanted], started
    )
    results["fleet"] = step("fleet benchmark", [*py, str(BENCH / "fleet.py"), *common], started)
    results["proxy"] = step("proxy overhead", [*py, str(BENCH / "proxy_overhead.py"), *common], started)
    results["credits"] = step("credit budgets", [*py, str(BENCH / "credits.py"), *common], started)
    results["admission"] = step(
        "admission against queue depth", [*py, str(BENCH / "admission.py"), *common], started
    )
    results["fleet scale"] = step(
        "N instances on one Redis", [*py, str(BENCH / "fleet_scale.py"), *common], started
    )
    results["peers"] = step(
        "peers side by side", [*py, str(BENCH / "peers" / "compare.py"), *common, "--peers", peers], started
    )
    failed = [name for name, ok in results.items() if not ok]
    verdict = "FAILED: " + ", ".join(failed) if failed else "done"
    print(f"[{time.monotonic() - started:7.1f}s] all benchmarks: {verdict}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
