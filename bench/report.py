"""The benchmark figures in README.md and bench/README.md, rendered from bench/results/*.json.

Every figure in those documents sits between a pair of marker comments and is rendered here from
the latest results files, with the machine and the time each file records; nothing is typed in.
`make docs` (tools/gen_docs.py) rewrites the sections; tests/unit/test_docs.py fails when they are
stale. Results from before a method changed are shown with what they cannot tell, never recomputed
into something they did not measure (a gateway's added latency from percentiles of separate runs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LEVELS = (1, 10, 50)

Doc = dict[str, Any]


def load(folder: Path = RESULTS) -> dict[str, Doc]:
    """The full-size (not ``--smoke``) results files of ``folder`` by name: fleet, peers, ..."""
    return {
        p.stem: json.loads(p.read_text())
        for p in sorted(folder.glob("*.json"))
        if not p.stem.endswith("-smoke")
    }


# -- formatting -------------------------------------------------------------------------------------


def ms(x: float | None) -> str:
    """A latency in ms with three significant figures or so."""
    if x is None:
        return "n/a"
    a = abs(x)
    return f"{x:.0f}" if a >= 100 else f"{x:.1f}" if a >= 10 else f"{x:.2f}" if a >= 1 else f"{x:.3f}"


def us(x: float) -> str:
    """Microseconds: whole above 100, else three significant figures."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def count(x: float) -> str:
    return f"{x:,.0f}"


def times(num: float | None, den: float | None) -> str:
    """``num / den`` as "0.64x", or "n/a" when the denominator is not positive or a side is missing."""
    if num is None or den is None or den <= 0:
        return "n/a"
    return f"{num / den:.2g}x" if num / den < 10 else f"{num / den:.0f}x"


def machine(doc: Doc) -> str:
    """Where and when ``doc`` was measured, from what the results file records."""
    m = doc["machine"]
    redis = m["redis"].split(" v=")[-1].split()[0] if "v=" in m["redis"] else m["redis"]
    load = m.get("load_average")
    busy = f", load average {' / '.join(map(str, load))} when written" if load else ""
    return (
        f"{m['cpus']} cores ({m['cpu']}), Python {m['python']}, Redis {redis}, {m['platform']}; "
        f"measured {doc['measured_at']}{busy}"
    )


def where(name: str, doc: Doc, link: str) -> str:
    return f"[{name}.json]({link}{name}.json), {machine(doc)}"


# -- the peers comparison ------------------------------------------------------------------------------


def row_at(system: Doc, c: int) -> Doc | None:
    return next((r for r in system["overhead"] if r["concurrency"] == c), None)


def added(system: Doc, c: int, q: str) -> float | None:
    """The added latency ``q`` (p50, p99) at ``c`` clients: a decision service's or library's whole
    call; a gateway's only when measured per request pair (older files subtracted percentiles)."""
    row = row_at(system, c)
    if row is None:
        return None
    if system["kind"] == "gateway":
        return row[f"added_{q}_ms"] if row.get("added_method") == "pairs" else None
    return float(row[f"{q}_ms"])


def per_core(system: Doc) -> float | None:
    pc = system.get("per_core")
    return pc["calls_per_cpu_second"] if pc else None


NAMES = {
    "fleet-limiter": "fleet-limiter lease API (acquire + release, 2 HTTP requests)",
    "envoy ratelimit": "envoy ratelimit (one `/json` call)",
    "fleet-limiter proxy": "fleet-limiter proxy",
    "litellm proxy": "LiteLLM proxy",
    "fleet-limiter in process": "fleet-limiter in process (acquire + release)",
    "limits fixed-window": "limits fixed window (one `hit`)",
    "limits moving-window": "limits moving window (one `hit`)",
}
PAIRS = {
    "envoy ratelimit": "fleet-limiter",
    "litellm proxy": "fleet-limiter proxy",
    "limits fixed-window": "fleet-limiter in process",
    "limits moving-window": "fleet-limiter in process",
}


def shown(doc: Doc) -> list[str]:
    return [n for n in NAMES if n in doc["systems"]]


def old_gateways(doc: Doc) -> bool:
    return any(
        s["kind"] == "gateway" and any(r.get("added_method") != "pairs" for r in s["overhead"])
        for s in doc["systems"].values()
    )


def peers_accuracy(doc: Doc) -> list[str]:
    limit = doc["params"]["limit"]
    out = [
        f"| admitted of L = {limit} per minute | 1.0x offered | 3.0x offered | over-admission at 3.0x "
        "| under-use at 1.0x |",
        "| --- | --- | --- | --- | --- |",
    ]
    for n in shown(doc):
        acc = {r["load"]: r for r in doc["systems"][n]["accuracy"]}
        if 1.0 not in acc or 3.0 not in acc:
            continue
        one, three = acc[1.0], acc[3.0]
        out.append(
            f"| {NAMES[n]} | {one['admitted']} ({one['admitted_over_limit']:.3f}) "
            f"| {three['admitted']} ({three['admitted_over_limit']:.3f}) "
            f"| {three['over_admission']:.1%} | {one['under_use']:.1%} |"
        )
    return out


def peers_overhead(doc: Doc) -> list[str]:
    out = [
        "| added latency p50 / p99, ms | " + " | ".join(f"{c} client{'s' * (c > 1)}" for c in LEVELS) + " |",
        "| --- |" + " --- |" * len(LEVELS),
    ]
    for n in shown(doc):
        s = doc["systems"][n]
        cells = []
        for c in LEVELS:
            p50, p99 = added(s, c, "p50"), added(s, c, "p99")
            row = row_at(s, c)
            if p50 is None and row is not None:  # a gateway in a file from before request pairs
                cells.append(f"n/a (latency {ms(row['p50_ms'])} / {ms(row['p99_ms'])})")
            else:
                cells.append(f"{ms(p50)} / {ms(p99)}")
        out.append(f"| {NAMES[n]} | " + " | ".join(cells) + " |")
    if old_gateways(doc):
        out += [
            "",
            "This file predates the request pairs: a gateway's added latency was then its latency minus "
            "the stand-in's from a separate run, which is not a measurement of it, so only the gateway's "
            "own latency is shown (n/a). The next `make bench` fills it in.",
        ]
    return out


def peers_per_core(doc: Doc) -> list[str]:
    out = ["| requests per CPU-second at 50 clients | own process | with Redis |", "| --- | --- | --- |"]
    for n in shown(doc):
        pc = doc["systems"][n].get("per_core")
        if pc:
            out.append(
                f"| {NAMES[n]} | {count(pc['calls_per_cpu_second'])} "
                f"| {count(pc['calls_per_cpu_second_with_redis'])} |"
            )
    return out


def peers_ratios(doc: Doc) -> list[str]:
    s = doc["systems"]
    out = ["| peer / fleet-limiter, same run | against | p50 at " + " / ".join(map(str, LEVELS))]
    out[0] += " clients | per CPU-second |"
    out.append("| --- | --- | --- | --- |")
    for peer, ours in PAIRS.items():
        if peer not in s or ours not in s:
            continue
        p50s = " / ".join(times(added(s[peer], c, "p50"), added(s[ours], c, "p50")) for c in LEVELS)
        out.append(f"| {NAMES[peer]} | {ours} | {p50s} | {times(per_core(s[peer]), per_core(s[ours]))} |")
    return out


def peers_fleet_only(doc: Doc) -> list[str]:
    out = []
    b = doc.get("borrowing")
    if b:
        flex, static = b["flexible"]["utilisation"], b["static"]["utilisation"]
        out.append(
            f"Borrowing utilisation under imbalanced load: flexible job types **{flex:.2f}** of the slots, "
            f"a static split **{static:.2f}** ({times(flex, static)})."
        )
    conv = doc.get("convergence")
    if conv:
        out.append(
            f"Convergence across three `serve` instances ({conv['join_seconds']['n']} rounds): join p50 "
            f"{ms(conv['join_seconds']['p50_ms'])} ms, graceful leave p50 "
            f"{ms(conv['graceful_leave_seconds']['p50_ms'])} ms."
        )
    return out


def peers(doc: Doc, link: str) -> list[str]:
    versions = ", ".join(
        f"{n} {s['version']}" for n, s in doc["systems"].items() if s.get("version") and "moving" not in n
    )
    failed = doc.get("failed") or {}
    out = [f"From {where('peers', doc, link)}. Peers: {versions}."]
    if failed:
        out.append("Failed in that run: " + "; ".join(f"{k}: {v}" for k, v in failed.items()) + ".")
    out += ["", "**Accuracy**", "", *peers_accuracy(doc), "", "**Overhead**", "", *peers_overhead(doc)]
    out += ["", "**Throughput per core**", "", *peers_per_core(doc), "", "**Ratios**", ""]
    out += [*peers_ratios(doc), "", "**fleet-limiter only**", "", *peers_fleet_only(doc)]
    return out


# -- fleet, proxy, credits -----------------------------------------------------------------------------


def fleet(doc: Doc, link: str) -> list[str]:
    cs = [r["concurrency"] for r in doc["in_process"]]
    head = "| what | " + " | ".join(f"{c} client{'s' * (c > 1)}" for c in cs) + " |"
    inp, http = doc["in_process"], doc["http"]

    def cells(rows: list[Doc], f: Callable[[Doc], str]) -> str:
        return " | ".join(f(r) for r in rows)

    def lat(r: Doc) -> str:
        return f"{ms(r['p50_ms'])} / {ms(r['p99_ms'])}"

    def jobs(r: Doc) -> str:
        return count(r["jobs_per_second"])

    redis = " | ".join(
        f"{a['redis_commands_per_job']:.2g} / {b['redis_commands_per_job']:.2g}"
        for a, b in zip(inp, http, strict=True)
    )
    conv = doc["convergence"]
    return [
        f"From {where('fleet', doc, link)}.",
        "",
        head,
        "| --- |" + " --- |" * len(cs),
        f"| acquire + release in process, p50 / p99 ms | {cells(inp, lat)} |",
        f"| in process, jobs per second | {cells(inp, jobs)} |",
        f"| acquire + release over HTTP (2 requests), p50 / p99 ms | {cells(http, lat)} |",
        f"| over HTTP, jobs per second | {cells(http, jobs)} |",
        f"| Redis commands per admitted job (in process / HTTP) | {redis} |",
        "",
        f"Convergence across three instances ({conv['join_seconds']['n']} rounds; heartbeat "
        f"{conv['heartbeatSeconds']} s, instance timeout {conv['instanceTimeoutSeconds']} s):",
        "",
        "| event | p50 | worst |",
        "| --- | --- | --- |",
        *(
            f"| {label} | {ms(conv[key]['p50_ms'])} ms | {ms(conv[key]['p99_ms'])} ms |"
            for label, key in (
                ("join (from the new instance turning ready to all agreeing)", "join_seconds"),
                ("graceful leave (from SIGTERM)", "graceful_leave_seconds"),
                ("crash (from SIGKILL)", "crash_seconds"),
            )
        ),
    ]


def proxy(doc: Doc) -> str:
    """One line on the proxy's added latency at one client (n/a in a file from before the pairs)."""
    row = next(r for r in doc["levels"] if r["concurrency"] == 1)
    if row.get("added_method") != "pairs":
        return (
            "added latency not measured per request pair in that file (it subtracted percentiles of "
            f"separate runs); the proxied request took {ms(row['proxy']['p50_ms'])} ms p50 at one client"
        )
    return (
        f"the proxy adds {ms(row['added']['p50_ms'])} ms p50 / {ms(row['added']['p99_ms'])} ms p99 per "
        "request at one client (per request pair)"
    )


def readme(docs: dict[str, Doc]) -> list[str]:
    """The README's highlights, each with its results file, machine and date."""
    link = "bench/results/"
    out = []
    if "fleet" in docs:
        f = docs["fleet"]
        inp, http, conv = f["in_process"][0], f["http"][0], f["convergence"]
        out.append(
            f"* **Fleet** ({where('fleet', f, link)}): a lease (acquire + release) takes {ms(inp['p50_ms'])} "
            f"ms p50 in process and {ms(http['p50_ms'])} ms over HTTP at one client; "
            f"{inp['redis_commands_per_job']:.2g} Redis commands per admitted job in process; a join "
            f"reaches every instance in {ms(conv['join_seconds']['p50_ms'])} ms p50, a graceful leave in "
            f"{ms(conv['graceful_leave_seconds']['p50_ms'])} ms."
        )
    if "peers" in docs:
        p = docs["peers"]
        s = p["systems"]
        over = {
            NAMES[n].split(" (")[0]: next(r["over_admission"] for r in s[n]["accuracy"] if r["load"] == 3.0)
            for n in shown(p)
            if any(r["load"] == 3.0 for r in s[n]["accuracy"])
        }
        acc = ", ".join(f"{n} {v:.1%}" for n, v in over.items())
        out.append(
            f"* **Against the peers** ({where('peers', p, link)}): over-admission at 3x load with three "
            f"replicas and L = {p['params']['limit']} per minute: {acc}."
        )
        for peer, ours in PAIRS.items():
            if peer in s and ours in s and "moving" not in peer:
                p50s = " / ".join(times(added(s[peer], c, "p50"), added(s[ours], c, "p50")) for c in LEVELS)
                out.append(
                    f"  {NAMES[peer].split(' (')[0]} / {ours}: added latency p50 {p50s} at "
                    f"{' / '.join(map(str, LEVELS))} clients, {times(per_core(s[peer]), per_core(s[ours]))} "
                    "the requests per CPU-second."
                )
    if "proxy_overhead" in docs:
        d = docs["proxy_overhead"]
        out.append(f"* **Proxy** ({where('proxy_overhead', d, link)}): {proxy(d)}.")
    if "admission" in docs:
        a = docs["admission"]
        first, last = a["levels"][0], a["levels"][-1]
        out.append(
            f"* **Admission against queue depth** ({where('admission', a, link)}): an acquire and release "
            f"take {us(first['other_type']['p50_us'])} us p50 in process with no job waiting and "
            f"{us(last['other_type']['p50_us'])} us with {count(last['waiting'])} waiting."
        )
    if "fleet_scale" in docs:
        d = docs["fleet_scale"]
        big = d["sizes"][-1]
        out.append(
            f"* **Fleet scale** ({where('fleet_scale', d, link)}): {count(big['instances'])} instances on "
            f"one Redis (all in one process) agree {big['cold_start_s']:.1f} s after a cold start; at that "
            f"size a join reaches all in {ms(big['join_s'] * 1000)} ms, a graceful leave in "
            f"{ms(big['graceful_leave_s'] * 1000)} ms; idle, "
            f"{big['idle_redis_commands_per_s_per_instance']:.2g} Redis commands per second per instance."
        )
    if "credits" in docs:
        c = docs["credits"]
        http1 = c["http"][0]
        out.append(
            f"* **Credits** ({where('credits', c, link)}): a consume is "
            f"{http1['redis_round_trips_per_consume']:.2g} Redis round trip "
            f"({http1['redis_commands_per_consume']:.2g} commands), {ms(http1['p50_ms'])} ms p50 over HTTP "
            "at one client."
        )
    return out


def admission(docs: dict[str, Doc], link: str) -> list[str]:
    """Admission cost against queue depth: the latest run, and the run of the code before, if kept."""
    out = []
    for name in ("admission", "admission-scan"):
        if name not in docs:
            continue
        d = docs[name]
        out += [
            "",
            f"{d.get('code', name)}: from {where(name, d, link)}.",
            "",
            "| waiting tickets | acquire + release, other type: p50 / p99 us "
            "| release + acquire, same type: p50 / p99 us |",
            "| --- | --- | --- |",
        ]
        for r in d["levels"]:
            o, c = r["other_type"], r["churn"]
            out.append(
                f"| {count(r['waiting'])} | {us(o['p50_us'])} / {us(o['p99_us'])} "
                f"| {us(c['p50_us'])} / {us(c['p99_us'])} |"
            )
    return out[1:]


def fleet_scale(docs: dict[str, Doc], link: str) -> list[str]:
    """N instances on one Redis: the latest run, and the run of the code before, if kept."""
    out = []
    for name in sorted(n for n in docs if n.startswith("fleet_scale")):
        d = docs[name]
        out += [
            "",
            f"{d.get('code', name)}: from {where(name, d, link)}.",
            "",
            "| instances | cold start: all agree (s) | one join reaches all (ms) | one graceful leave (ms) "
            "| idle Redis commands/s (per instance) | idle Redis CPU | idle CPU of the process "
            "| Redis memory per instance |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in d["sizes"]:
            out.append(
                f"| {count(r['instances'])} | {r['cold_start_s']:.2f} | {ms(r['join_s'] * 1000)} "
                f"| {ms(r['graceful_leave_s'] * 1000)} | {count(r['idle_redis_commands_per_s'])} "
                f"({r['idle_redis_commands_per_s_per_instance']:.2f}) | {r['idle_redis_cpu']:.1%} "
                f"| {r['idle_process_cpu']:.0%} | {r['redis_memory_per_instance_bytes'] / 1024:.1f} KiB |"
            )
    return out[1:]


# -- the documents -------------------------------------------------------------------------------------


def sections(docs: dict[str, Doc]) -> dict[str, dict[str, list[str]]]:
    """Per document, its generated sections by name."""
    bench: dict[str, list[str]] = {}
    if "fleet" in docs:
        bench["fleet"] = fleet(docs["fleet"], "results/")
    if "peers" in docs:
        bench["peers"] = peers(docs["peers"], "results/")
    if "admission" in docs:
        bench["admission"] = admission(docs, "results/")
    if "fleet_scale" in docs:
        bench["fleet_scale"] = fleet_scale(docs, "results/")
    return {"README.md": {"benchmarks": readme(docs)}, "bench/README.md": bench}


def marker(name: str, end: bool = False) -> str:
    if end:
        return f"<!-- end generated: {name} -->"
    return f"<!-- begin generated: {name} (from bench/results/*.json by `make docs`; do not edit) -->"


def fill(text: str, parts: dict[str, list[str]], where_: str) -> str:
    """``text`` with each section between its markers replaced by ``parts``' lines."""
    for name, lines in parts.items():
        pattern = re.compile(
            re.escape(marker(name)) + r"\n.*?" + re.escape(marker(name, end=True)), flags=re.DOTALL
        )
        if not pattern.search(text):
            raise ValueError(f"{where_}: no markers for the generated section {name!r}: add {marker(name)!r}")
        block = "\n".join([marker(name), *lines, marker(name, end=True)])
        text = pattern.sub(lambda _, block=block: block, text)
    return text


def render(root: Path = ROOT, folder: Path = RESULTS) -> dict[Path, str]:
    """Each document's full text with its generated sections filled in from ``folder``."""
    return {
        root / rel: fill((root / rel).read_text(), parts, rel)
        for rel, parts in sections(load(folder)).items()
    }
