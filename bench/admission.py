"""Admission cost against queue depth (issue 15): what one acquire and one release cost the job-type
manager when 0, 100, 1,000 or 10,000 tickets wait.

    python -P bench/admission.py [--smoke] [--results-dir DIR]

In process, no Redis, no HTTP: the manager (limiter/core/admission.py) on the system clock, with the
policy below. Two operations are timed at each depth:

* ``other type``: an acquire of a (fixed) job type with free slots, then its release, while the
  waiting tickets all belong to a flexible job type whose slots, and those it borrowed, are full.
  The queue ahead is not this job's business, so its cost should not grow with it.
* ``churn``: a release of a lease of the busy type (the oldest waiting ticket takes the slot) and a
  new acquire of that type (it joins the end of the queue): the depth stays the same. With none
  waiting, the new acquire takes the freed slot.

Each operation runs ``rounds`` times; the results are per operation pair, p50 / p99 in
microseconds. Writes bench/results/admission.json (admission-smoke.json with --smoke) and a PNG.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import gc
import time
from typing import Any

from bench.common import Progress, percentiles, write_results
from limiter.core.admission import JobTypeManager
from limiter.core.allocation import compute_allocation
from limiter.core.clock import SystemClock
from limiter.core.policy import parse_policy

DEPTHS = [0, 100, 1000, 10000]

POLICY: dict[str, Any] = {
    "models": [
        {"name": "m1", "limits": {"maxConcurrentRequests": 40}},
        {"name": "m2", "limits": {"maxConcurrentRequests": 40}},
    ],
    "jobTypes": [
        {"name": "busy", "ratio": 0.5, "queue": {"maxWaiting": 20000, "maxWaitSeconds": 3600}},
        {"name": "spare", "ratio": 0.25},
        {"name": "other", "ratio": 0.25, "flexible": False},
    ],
}


def loaded_manager(depth: int) -> tuple[JobTypeManager, list[Any]]:
    """A manager whose ``busy`` type holds all the flexible slots it can and has ``depth`` waiting."""
    spec, _ = parse_policy(POLICY)
    m = JobTypeManager(spec, compute_allocation(spec, 1), SystemClock())
    held = []
    # Fill busy's own slots and everything it borrows from the idle flexible `spare`, on both models;
    # `other` is fixed, so its slots stay free.
    while True:
        t = m.submit("busy")
        if t.state != "granted":
            m.cancel(t)
            break
        held.append(t)
    for _ in range(depth):
        t = m.submit("busy")
        assert t.state == "waiting", t.state
    return m, held


def time_other(m: JobTypeManager, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        t = m.submit("other")
        m.release(t)
        samples.append(time.perf_counter() - start)
        assert t.state == "released", t.state
    return samples


def time_churn(m: JobTypeManager, held: list[Any], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        lease = held.pop(0)
        start = time.perf_counter()
        granted = m.release(lease)
        t = m.submit("busy")
        samples.append(time.perf_counter() - start)
        # With tickets waiting the oldest takes the slot and the new one waits; with none, the new
        # one takes it at once.
        got = granted if granted else [t]
        assert len(got) == 1 and got[0].state == "granted", (t.state, len(granted))
        held.extend(got)
    return samples


def micro(stats: dict[str, float]) -> dict[str, float]:
    return {
        "p50_us": round(stats["p50_ms"] * 1000, 2),
        "p99_us": round(stats["p99_ms"] * 1000, 2),
        "mean_us": round(stats["mean_ms"] * 1000, 2),
        "n": stats["n"],
    }


def plot(doc: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    depths = [max(1, r["waiting"]) for r in doc["levels"]]
    series = (("other_type", "acquire+release, other type"), ("churn", "release+acquire, same type"))
    for key, label in series:
        ax.plot(depths, [r[key]["p50_us"] for r in doc["levels"]], marker="o", label=f"{label} p50")
        ax.plot(depths, [r[key]["p99_us"] for r in doc["levels"]], marker="x", ls="--", label=f"{label} p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("waiting tickets (0 plotted at 1)")
    ax.set_ylabel("microseconds per operation pair")
    ax.set_title("admission cost against queue depth (in process)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description="admission cost against queue depth")
    parser.add_argument("--smoke", action="store_true", help="few rounds, to check it runs")
    parser.add_argument("--results-dir", type=Path, default=None, help="default bench/results")
    args = parser.parse_args()
    progress = Progress()
    rounds = 50 if args.smoke else 2000
    levels = []
    for depth in DEPTHS:
        m, held = loaded_manager(depth)
        gc.collect()  # the set-up's garbage is not the operations' cost
        other = micro(percentiles(time_other(m, rounds)))
        churn = micro(percentiles(time_churn(m, held, rounds)))
        assert len(m.waiting()) == depth
        levels.append({"waiting": depth, "rounds": rounds, "other_type": other, "churn": churn})
        progress(
            f"{depth:>6} waiting: other type p50 {other['p50_us']} us p99 {other['p99_us']} us; "
            f"churn p50 {churn['p50_us']} us p99 {churn['p99_us']} us"
        )
    deepest = levels[-1]
    doc = {
        "code": "queues by kind: only each kind's head is tried (limiter/core/admission.py)",
        "what": "job-type manager cost per operation pair against the number of waiting tickets, in process",
        "policy": POLICY,
        "levels": levels,
        # p50 cost at the deepest queue over the cost at a shallower one (1.0 = independent of depth).
        # With none waiting, `churn` takes a different path (the acquire gets the slot itself).
        "ratio_p50_deepest_over": {
            str(level["waiting"]): {
                k: round(deepest[k]["p50_us"] / level[k]["p50_us"], 2) if level[k]["p50_us"] > 0 else None
                for k in ("other_type", "churn")
            }
            for level in levels[:-1]
        },
    }
    path = write_results("admission-smoke" if args.smoke else "admission", doc, args.results_dir)
    drawn = plot(doc, path.with_suffix(".png"))
    progress(f"wrote {path}" + (" and its PNG" if drawn else " (no matplotlib: no PNG)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
