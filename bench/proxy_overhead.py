"""Benchmark of the LLM proxy's overhead (issue 7): the same chat completion sent straight to the
stand-in LLM server and through a `fleet-limiter serve` instance in front of it, p50/p99 latency
and throughput at 1, 10 and 50 concurrent clients, measured in one run so the ratio is fair.

    python -P bench/proxy_overhead.py [--smoke] [--seconds S] [--results-dir DIR]

The stand-in server (tests/fakes/llm_server.py, answering at once), the instance and this load
generator (aiohttp, closed loop: each client sends its next request when the last one ends) are
three processes on 127.0.0.1, with a private redis-server. At each level every client sends the
request direct and proxied, one after the other, and the added latency is measured per pair.
Writes bench/results/proxy_overhead.json and .png.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repo root, for bench.* and tests.* (the stdlib `operator` is imported by then, so the repo's
# operator/ folder cannot shadow it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import signal
import subprocess
import tempfile
import time
from typing import Any

import aiohttp
import yaml

from bench.common import ROOT, Progress, percentiles, safe_env, start_instance, wait_ready, write_results
from tests.support.redis_server import RedisServer

LEVELS = (1, 10, 50)
MODEL = "bench-model"
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say something short about rate limits."}],
    "max_tokens": 16,
}


def spec(upstream: str) -> dict[str, Any]:
    """Limits far above the load: the numbers measure the proxy, not a queue or a spent budget
    (the window budget is still reserved and settled for every request)."""
    return {
        "models": [
            {
                "name": MODEL,
                "limits": {"tokensPerMinute": 10**12, "maxConcurrentRequests": 100000},
                "upstream": {"url": upstream, "protocol": "openai"},
            }
        ],
        "jobTypes": [{"name": "chat", "ratio": 1.0, "estimate": {"tokens": 100}}],
    }


def start_fake() -> tuple[subprocess.Popen[str], str]:
    """The stand-in LLM server in a process of its own; returns it and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-P", str(ROOT / "tests" / "fakes" / "llm_server.py")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tempfile.gettempdir(),
        env=safe_env(),
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"the stand-in LLM server did not start (printed {url!r})")
    return proc, url


async def load(direct_url: str, proxy_url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """``concurrency`` clients each sending BODY straight to the stand-in and through the proxy, one
    after the other (alternating which goes first), for ``seconds``: each pair's difference is one
    sample of the added latency (never a difference of percentiles from separate runs)."""
    lat: dict[str, list[float]] = {"direct": [], "proxy": []}
    added: list[float] = []
    errors = {"direct": 0, "proxy": 0}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        for url in (direct_url, proxy_url) * 3:  # warm the connection pools (and the proxy's, upstream)
            async with session.post(url, json=BODY) as resp:
                await resp.read()
        deadline = time.monotonic() + seconds

        async def timed(which: str, url: str) -> float | None:
            start = time.perf_counter()
            async with session.post(url, json=BODY) as resp:
                await resp.read()
                if resp.status != 200:
                    errors[which] += 1
                    return None
            return time.perf_counter() - start

        async def client(proxy_first: bool) -> None:
            while time.monotonic() < deadline:
                order = [("proxy", proxy_url), ("direct", direct_url)]
                if not proxy_first:
                    order.reverse()
                proxy_first = not proxy_first
                got = {which: await timed(which, url) for which, url in order}
                if got["direct"] is None or got["proxy"] is None:
                    continue
                lat["direct"].append(got["direct"])
                lat["proxy"].append(got["proxy"])
                added.append(got["proxy"] - got["direct"])

        started = time.monotonic()
        await asyncio.gather(*(client(i % 2 == 0) for i in range(concurrency)))
        elapsed = time.monotonic() - started
    return {
        "concurrency": concurrency,
        "added_method": "pairs",
        "added": percentiles(added),
        **{
            which: {
                **percentiles(lat[which]),
                "requests_per_second": len(lat[which]) / elapsed,
                "errors": errors[which],
            }
            for which in ("direct", "proxy")
        },
    }


def plot(doc: dict[str, Any], path: Path) -> bool:
    """A PNG of p50/p99, direct and proxied, per level; False when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["levels"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, stat in ((axes[0], "p50_ms"), (axes[1], "p99_ms")):
        xs = range(len(rows))
        ax.bar([i - 0.2 for i in xs], [r["direct"][stat] for r in rows], width=0.4, label="direct")
        ax.bar([i + 0.2 for i in xs], [r["proxy"][stat] for r in rows], width=0.4, label="through the proxy")
        for i, r in enumerate(rows):
            ax.annotate(f"+{r['added'][stat]:.2f} ms", (i + 0.2, r["proxy"][stat]),
                        ha="center", va="bottom", fontsize=8)  # fmt: skip
        ax.set_xticks(list(xs), [str(r["concurrency"]) for r in rows])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(f"{stat.removesuffix('_ms')} latency (ms)")
        ax.legend()
    fig.suptitle("fleet-limiter proxy overhead: chat completion, stand-in LLM answering at once")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


async def run(seconds: float) -> dict[str, Any]:
    say = Progress()
    doc: dict[str, Any] = {"seconds_per_run": seconds, "levels": []}
    fake, upstream = start_fake()
    say(f"stand-in LLM server on {upstream}")
    try:
        with RedisServer() as redis, tempfile.TemporaryDirectory() as tmp:
            say(f"private redis-server on {redis.url}")
            policy = Path(tmp) / "proxy.yaml"
            manifest = {"kind": "RateLimitPolicy", "metadata": {"name": "proxy", "namespace": "bench"}}
            policy.write_text(yaml.safe_dump({**manifest, "spec": spec(upstream)}))
            doc["policy"] = spec(upstream)
            proc, url = start_instance(policy, redis.url, "bench-proxy", log=Path(tmp) / "instance.log")
            try:
                try:
                    async with aiohttp.ClientSession() as session:
                        await wait_ready(session, url, within=60)
                except SystemExit:
                    print((Path(tmp) / "instance.log").read_text()[-3000:], file=sys.stderr)
                    raise
                say(f"instance on {url}")
                for c in LEVELS:
                    row = await load(
                        upstream + "/v1/chat/completions", url + "/v1/chat/completions", c, seconds
                    )
                    direct, proxied = row["direct"], row["proxy"]
                    row["overhead_p50_ms"] = row["added"]["p50_ms"]
                    row["overhead_p99_ms"] = row["added"]["p99_ms"]
                    # Proxied over direct latency, same pairs; null (with why) rather than a nonsense number.
                    for q in ("p50", "p99"):
                        den = direct[f"{q}_ms"]
                        row[f"ratio_{q}"] = proxied[f"{q}_ms"] / den if den > 0 else None
                        if den <= 0:
                            row[f"ratio_{q}_reason"] = f"direct {q} is {den:.4g} ms, not positive"
                    doc["levels"].append(row)
                    say(
                        f"{c:3d} clients: direct p50 {direct['p50_ms']:.2f} / p99 {direct['p99_ms']:.2f} ms, "
                        f"proxied p50 {proxied['p50_ms']:.2f} / p99 {proxied['p99_ms']:.2f} ms "
                        f"(added per pair p50 {row['overhead_p50_ms']:.2f} / "
                        f"p99 {row['overhead_p99_ms']:.2f} ms), "
                        f"{direct['requests_per_second']:.0f} vs {proxied['requests_per_second']:.0f} req/s"
                    )
                    if direct["errors"] or proxied["errors"]:
                        raise SystemExit(
                            f"errors during the run: {direct['errors']} direct, {proxied['errors']} proxied"
                        )
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    finally:
        fake.send_signal(signal.SIGTERM)
        fake.wait(10)
        if fake.stdout is not None:
            fake.stdout.close()
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description="LLM proxy overhead benchmark")
    parser.add_argument("--smoke", action="store_true", help="tiny durations, to check the script runs")
    parser.add_argument("--seconds", type=float, default=None, help="per level and target (default 10)")
    parser.add_argument("--results-dir", type=Path, default=None, help="default bench/results")
    args = parser.parse_args()
    seconds = args.seconds or (0.3 if args.smoke else 10.0)
    doc = asyncio.run(run(seconds))
    doc["smoke"] = args.smoke
    name = "proxy_overhead-smoke" if args.smoke else "proxy_overhead"
    path = write_results(name, doc, args.results_dir)
    print(f"wrote {path}")
    png = path.with_suffix(".png")
    if plot(doc, png):
        print(f"wrote {png}")
    else:
        print("matplotlib is not installed: no plot (pip install matplotlib)")


if __name__ == "__main__":
    main()
