"""`make run`: a private Redis, a local fleet of limiter instances, a light stream of jobs, and a
live view of the allocation. Ctrl-C (or --duration) stops everything cleanly.

Usage: python tools/localfleet.py [--policy FILE] [--instances 3] [--duration SECONDS] [--no-load]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from subprocess import Popen

import aiohttp
from rich.console import Console

from limiter.client import LimiterClient, LimiterError
from limiter.core.policy import PolicyError, load_policy
from limiter.top import run_top

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / ".run"
EXE = Path(sys.executable).with_name("fleet-limiter")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def step(console: Console, started: float, message: str) -> None:
    console.print(f"[dim]{time.monotonic() - started:6.1f}s[/] {message}")


def wait_http(url: str, timeout: float) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return True
        time.sleep(0.1)
    return False


async def job_stream(urls: list[str], job_types: list[str], stop: asyncio.Event) -> tuple[int, int]:
    """A few concurrent workers acquiring and releasing leases on random instances."""
    done = refused = 0

    async def worker(i: int) -> None:
        nonlocal done, refused
        rng = random.Random(i)
        async with LimiterClient(urls[i % len(urls)]) as client:
            while not stop.is_set():
                try:
                    async with client.job(rng.choice(job_types), wait_seconds=2) as lease:
                        await asyncio.sleep(rng.uniform(0.2, 1.5))
                        lease.report(
                            tokens=max(1, int(lease.reserved.get("tokens", 0) * rng.uniform(0.3, 1.0)))
                        )
                    done += 1
                except (LimiterError, aiohttp.ClientError, OSError):
                    refused += 1
                    await asyncio.sleep(0.5)

    await asyncio.gather(*(worker(i) for i in range(4 * len(urls))))
    return done, refused


def start_fleet(
    args: argparse.Namespace, console: Console, started: float
) -> tuple[list[Popen[bytes]], list[str]]:
    """A private redis-server and the instances, as processes (stopped by :func:`stop_all`)."""
    redis_bin = shutil.which("redis-server")
    if not redis_bin:
        raise SystemExit("error: redis-server is not installed: run `bash tools/ensure-deps.sh`")
    RUN.mkdir(exist_ok=True)
    procs: list[Popen[bytes]] = []
    redis_port = free_port()
    step(console, started, f"starting a private redis-server on 127.0.0.1:{redis_port}")
    redis_args = ["--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    redis_args += ["--dir", str(RUN), "--logfile", str(RUN / "redis.log")]
    procs.append(subprocess.Popen([redis_bin, *redis_args]))
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    urls = []
    time.sleep(0.3)
    for i in range(args.instances):
        port = free_port()
        with (RUN / f"instance-{i + 1}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        str(EXE),
                        "serve",
                        "--policy",
                        str(args.policy),
                        "--redis",
                        redis_url,
                        "--port",
                        str(port),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # PYTHONSAFEPATH: the repo's operator/ must never shadow the stdlib `operator`.
                    env={
                        **os.environ,
                        "PYTHONSAFEPATH": "1",
                        "FLEET_LIMITER_INSTANCE_ID": f"instance-{i + 1}",
                    },
                )
            )
        urls.append(f"http://127.0.0.1:{port}")
        step(console, started, f"instance-{i + 1} on {urls[-1]} (log: .run/instance-{i + 1}.log)")
    return procs, urls


def stop_all(procs: list[Popen[bytes]], console: Console, started: float) -> None:
    step(console, started, "stopping the fleet (SIGTERM) and Redis")
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
    step(console, started, "stopped")


async def demo(args: argparse.Namespace, urls: list[str], job_types: list[str], console: Console) -> None:
    """The job stream and the live view, until Ctrl-C, SIGTERM or --duration."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    load = None
    if not args.no_load:
        load = asyncio.create_task(job_stream(urls, job_types, stop))
    frames = None if args.duration is None else max(1, int(args.duration / args.interval))
    view = asyncio.create_task(run_top(urls, None, interval=args.interval, frames=frames, console=console))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({view, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    view.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await view
    if load is not None:
        done, refused = await load
        console.print(f"job stream: {done} jobs completed, {refused} refused or retried")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--policy", type=Path, default=ROOT / "examples" / "production.yaml")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--no-load", action="store_true", help="no job stream")
    args = parser.parse_args()
    if args.instances < 1:
        parser.error("--instances: at least 1")
    console = Console()
    started = time.monotonic()
    try:
        spec, meta = load_policy(args.policy)
    except PolicyError as exc:
        console.print(f"[red]error:[/] {exc.first_line()}")
        return 2
    procs, urls = start_fleet(args, console, started)
    try:
        for url in urls:
            if not wait_http(url + "/ready", 20):
                console.print(f"[red]error:[/] {url} did not become ready; see .run/*.log")
                return 1
        step(
            console,
            started,
            f"fleet of {len(urls)} ready for policy {meta.namespace}/{meta.name}; Ctrl-C stops",
        )
        asyncio.run(demo(args, urls, [j.name for j in spec.job_types], console))
        return 0
    finally:
        stop_all(procs, console, started)


if __name__ == "__main__":
    sys.exit(main())
