"""The peers comparison as one PNG: accuracy, added latency, throughput per core, borrowing."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = {n: s for n, s in doc["systems"].items() if s["kind"] != "baseline"}
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))

    ax = axes[0][0]
    names = [n for n, s in systems.items() if s["accuracy"]]
    for j, load in enumerate((1.0, 3.0)):
        vals = [
            next((r["admitted_over_limit"] for r in systems[n]["accuracy"] if r["load"] == load), 0.0)
            for n in names
        ]
        ax.bar(
            [i + (j - 0.5) * 0.4 for i in range(len(names))], vals, width=0.4, label=f"offered {load:g}x L"
        )
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("admitted in the window / L")
    ax.set_title(f"accuracy: 3 replicas, L = {doc['params']['limit']} per minute")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    for n, s in systems.items():
        rows = [r for r in s["overhead"] if "added_p50_ms" in r]
        if rows:
            xs = [r["concurrency"] for r in rows]
            line = ax.plot(xs, [max(1e-3, r["added_p50_ms"]) for r in rows], marker="o", label=f"{n} p50")[0]
            ax.plot(
                xs,
                [max(1e-3, r["added_p99_ms"]) for r in rows],
                marker="x",
                linestyle=":",
                color=line.get_color(),
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("added latency per request, ms (p50 solid, p99 dotted)")
    ax.set_title("overhead")
    ax.legend(fontsize=7)

    ax = axes[1][0]
    names = [n for n, s in systems.items() if s.get("per_core")]
    ax.bar(
        range(len(names)), [systems[n]["per_core"]["calls_per_cpu_second"] for n in names], label="own CPU"
    )
    ax.bar(
        range(len(names)),
        [systems[n]["per_core"]["calls_per_cpu_second_with_redis"] for n in names],
        width=0.5,
        label="own + Redis CPU",
    )
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("requests per CPU-second (50 clients)")
    ax.set_title("throughput per core")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    borrow = doc.get("borrowing")
    if borrow:
        labels = ["flexible", "static"]
        ax.bar(labels, [borrow[k]["utilisation"] for k in labels])
        conv = doc.get("convergence", {})
        text = ""
        if conv:
            text = (
                f"join p50 {conv['join_seconds']['p50_ms']:.1f} ms, "
                f"graceful leave p50 {conv['graceful_leave_seconds']['p50_ms']:.1f} ms"
            )
        ax.set_title("fleet-limiter only: slot utilisation under imbalanced load\n" + text, fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("share of slots in use")
    else:
        ax.axis("off")
    fig.suptitle(
        "fleet-limiter and its peers: one machine, one Redis, one run" + (" (smoke)" if doc["smoke"] else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
