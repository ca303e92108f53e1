"""Shared pieces of the benchmarks: progress lines, percentiles, results files, plots."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


class Progress:
    """One line per step with the elapsed time, never minutes of silence."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:7.1f}s] {message}", flush=True)


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds of samples given in seconds."""
    if not samples:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "n": 0}
    s = sorted(samples)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] * 1000

    return {
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(s) * 1000,
        "n": len(s),
    }


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "redis": redis,
        "platform": platform.platform(),
        # A shared machine's other work shows here (1, 5, 15 minute load averages when written).
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def write_results(name: str, doc: dict[str, Any], folder: Path | None = None) -> Path:
    """Write ``<folder>/<name>.json`` (default bench/results) with the machine it ran on."""
    folder = folder or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(
        json.dumps(
            {"machine": machine(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **doc},
            indent=2,
        )
        + "\n"
    )
    return path


EXE = Path(sys.executable).with_name("fleet-limiter")


def safe_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a helper process: this one's, plus ``extra``, with ``PYTHONSAFEPATH=1``
    so no Python in it (nor a Python it starts, such as pip's build steps) puts its working directory
    on ``sys.path``: the repo's ``operator/`` folder would shadow the standard library's ``operator``."""
    return {**os.environ, **(extra or {}), "PYTHONSAFEPATH": "1"}


def start_instance(
    policy: Path, redis_url: str, name: str, *, env: dict[str, str] | None = None, log: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """One `fleet-limiter serve` of ``policy`` on a free loopback port: (process, base URL)."""
    from tests.support.redis_server import free_port

    port = free_port()
    argv = [str(EXE), "serve", "--policy", str(policy), "--redis", redis_url, "--host", "127.0.0.1"]
    environ = safe_env({**(env or {}), "FLEET_LIMITER_INSTANCE_ID": name})
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            [*argv, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=environ, cwd=policy.parent
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(session: aiohttp.ClientSession, url: str, within: float = 30) -> None:
    """Until ``url``/ready answers 200 (RuntimeError after ``within`` seconds)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            async with session.get(url + "/ready") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"instance at {url} not ready within {within} s")
