"""The workloads every system runs, and the process plumbing they share.

A system under test is driven through two callables: ``decide(replica, trial)`` (one admission
decision for a request on one replica; True when admitted) for the accuracy workload, and
``call()`` (one request as a client sees it) for the overhead and throughput workloads. All loops
are bounded in count and time, and every address is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import percentiles, safe_env

ROOT = Path(__file__).resolve().parents[2]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds the processes have used so far (their own threads included)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU seconds of this process (the load generator, and an in-process library under test)."""
    return time.process_time()


async def wait_http(url: str, within: float = 60, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until ``url`` answers anything below 500 (or raise, with the process's exit code if it died)."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url} answered")
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status < 500:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {within:g} s")


def stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Terminate processes this benchmark started, then kill what is left after 10 s."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


class FakeLLM:
    """The stand-in LLM server (tests/fakes/llm_server.py) in a process of its own, so its CPU is
    not the load generator's nor the gateway's."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> FakeLLM:
        self.proc = subprocess.Popen(
            [sys.executable, "-P", str(Path(__file__).with_name("fake_llm.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=tempfile.gettempdir(),
            env=safe_env(),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("http://"):
            raise RuntimeError(f"the stand-in LLM server did not start: {line!r}")
        self.url = line
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# -- the workloads -----------------------------------------------------------------------------------


async def wait_for_window_room(seconds: float, say: Callable[[str], None]) -> None:
    """Minute windows of fleet-limiter, envoy ratelimit and LiteLLM are aligned to UTC minutes: start
    a trial only when it ends before the current minute does, so one window holds all of it."""
    left = 60 - (time.time() % 60)
    if left < seconds + 1.5:
        say(f"waiting {left:.1f} s for the next UTC minute (a trial must fit in one window)")
        await asyncio.sleep(left + 0.25)


async def accuracy(
    decide: Callable[[int, str], Awaitable[bool]],
    *,
    trial: str,
    replicas: int,
    limit: int,
    load: float,
    seconds: float,
) -> dict[str, Any]:
    """Offer ``load * limit`` requests at an even pace over ``seconds`` (open loop, round-robin over
    the replicas, no waiting in queues); count the admitted ones against ``limit``."""
    offered = round(load * limit)
    results: list[bool | None] = [None] * offered
    errors: list[str] = []

    async def one(i: int) -> None:
        try:
            results[i] = await asyncio.wait_for(decide(i % replicas, trial), 30)
        except Exception as exc:  # counted, never silently dropped
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            results[i] = False

    t0 = time.monotonic()
    tasks = []
    for i in range(offered):
        delay = t0 + i * seconds / offered - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    admitted = sum(1 for r in results if r)
    expected = min(offered, limit)
    return {
        "trial": trial,
        "limit": limit,
        "load": load,
        "offered": offered,
        "admitted": admitted,
        "admitted_over_limit": admitted / limit,
        "over_admission": max(0, admitted - limit) / limit,
        "under_use": max(0, expected - admitted) / expected,
        "errors": len(errors),
        "error_sample": errors[:3],
        "seconds": time.monotonic() - t0,
    }


async def closed_loop(
    call: Callable[[], Awaitable[Any]],
    *,
    concurrency: int,
    jobs: int,
    seconds: float,
    pids: Sequence[int] = (),
) -> dict[str, Any]:
    """``concurrency`` clients each calling back to back, ``jobs`` calls in all or ``seconds``; the
    latency of each call, calls per second, and CPU seconds used by ``pids`` and by this process."""
    latencies: list[float] = []
    failures: list[str] = []
    per_worker = max(1, jobs // concurrency)
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        for _ in range(per_worker):
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            try:
                await call()
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            latencies.append(time.perf_counter() - t0)

    cpu0, own0 = cpu_seconds(pids), own_cpu_seconds()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pids) - cpu0
    return {
        "concurrency": concurrency,
        "calls": len(latencies),
        "failures": len(failures),
        "failure_sample": failures[:3],
        "seconds": elapsed,
        "calls_per_second": len(latencies) / elapsed if elapsed else 0.0,
        "server_cpu_seconds": cpu,
        "client_cpu_seconds": own_cpu_seconds() - own0,
        **percentiles(latencies),
    }


async def paired_loop(
    via: Callable[[], Awaitable[Any]],
    direct: Callable[[], Awaitable[Any]],
    *,
    concurrency: int,
    jobs: int,
    seconds: float,
    pids: Sequence[int] = (),
) -> dict[str, Any]:
    """A gateway's added latency per request pair: ``concurrency`` clients each send the same request
    through the gateway (``via``) and straight to the upstream (``direct``), one after the other,
    alternating which goes first; ``added_*`` are percentiles of the per-pair differences, never a
    difference of percentiles taken from separate runs. The rest of the row is ``via``'s, as in
    ``closed_loop`` (CPU of ``pids`` counts the gateway's work only: the upstream is another process)."""
    via_lat: list[float] = []
    direct_lat: list[float] = []
    added: list[float] = []
    failures: list[str] = []
    per_worker = max(1, jobs // concurrency)
    deadline = time.monotonic() + seconds

    async def timed(call: Callable[[], Awaitable[Any]]) -> float:
        t0 = time.perf_counter()
        await call()
        return time.perf_counter() - t0

    async def worker(first_via: bool) -> None:
        for i in range(per_worker):
            if time.monotonic() > deadline:
                return
            try:
                if (i % 2 == 0) == first_via:
                    v = await timed(via)
                    d = await timed(direct)
                else:
                    d = await timed(direct)
                    v = await timed(via)
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            via_lat.append(v)
            direct_lat.append(d)
            added.append(v - d)

    cpu0, own0 = cpu_seconds(pids), own_cpu_seconds()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w % 2 == 0) for w in range(concurrency)))
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pids) - cpu0
    pairs = percentiles(added)
    return {
        "concurrency": concurrency,
        "calls": len(via_lat),
        "failures": len(failures),
        "failure_sample": failures[:3],
        "seconds": elapsed,
        "calls_per_second": len(via_lat) / elapsed if elapsed else 0.0,
        "server_cpu_seconds": cpu,
        "client_cpu_seconds": own_cpu_seconds() - own0,
        **percentiles(via_lat),
        "direct": percentiles(direct_lat),
        "added_method": "pairs",
        "added_p50_ms": pairs["p50_ms"],
        "added_p99_ms": pairs["p99_ms"],
        "added_mean_ms": pairs["mean_ms"],
    }
