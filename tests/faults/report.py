"""The fault figures of docs/fleet.md, rendered from docs/faults.json; nothing is typed in.

The fault tests write tests/results/faults/<case>.json (git-ignored: every run, with its timeline).
`make docs` (tools/gen_docs.py) collects their figures into docs/faults.json, which is committed so a
fresh clone's docs agree with it, and renders the table between the markers of docs/fleet.md;
tests/unit/test_fault_figures.py fails when the table is stale or a case has no committed figures.
Running the tests never changes a committed file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "results" / "faults"
SUMMARY = ROOT / "docs" / "faults.json"
DOC = "docs/fleet.md"
SECTION = "faults"

#: Every case the fault tests record, in table order, with what it injects.
CASES: dict[str, str] = {
    "flushall": "`FLUSHALL`",
    "restart-empty": "Redis restarted without persistence",
    "outage-20s": "Redis unreachable for 20 s",
    "replica-promoted": "primary SIGKILLed, replica promoted",
    "sigkill-holding": "an instance SIGKILLed while its clients hold its leases",
    "sigstop-holding": "an instance SIGSTOPped 8 s while its clients hold its leases",
    "join-holding": "an instance joins a full fleet of two whose leases run on",
}

#: The cases of tests/faults/test_budgets.py (window and credit budgets), in table order.
BUDGET_CASES: dict[str, str] = {
    "budgets-flushall": "`FLUSHALL`",
    "budgets-restart-empty": "Redis restarted without persistence",
    "budgets-replica-promoted": "primary SIGKILLed, replica promoted",
    "budgets-sigkill": "an instance SIGKILLed",
}

Doc = dict[str, Any]


def collect(results: Path = RESULTS, summary: Path = SUMMARY) -> bool:
    """Merge the figures of every results file into ``summary`` (a case's newest run replaces its
    older one; cases not run keep theirs). Returns whether ``summary`` changed."""
    old = json.loads(summary.read_text()) if summary.exists() else {}
    cases = dict(old.get("cases", {}))
    for path in sorted(results.glob("*.json")):
        doc = json.loads(path.read_text())
        doc.pop("timeline", None)
        if doc.get("case") in CASES or doc.get("case") in BUDGET_CASES:
            cases[doc["case"]] = doc
    new = {
        "about": "figures of the fault tests (tests/faults), collected by `make docs`; do not edit",
        "cases": {c: cases[c] for c in [*CASES, *BUDGET_CASES] if c in cases},
    }
    if new == old:
        return False
    summary.write_text(json.dumps(new, indent=2) + "\n")
    return True


def seconds(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} s"


def row(case: str, d: Doc) -> str:
    ghost = "no instance vanished"
    if "ghost_leases" in d:
        seen = d["ghost_seen_s"]
        held = f"{seen[1] - seen[0]:.1f} s" if seen else "n/a"
        ghost = (
            f"evicted after {seconds(d['evicted_after_s'])}; its {d['ghost_leases']} leases counted for "
            f"{held}; whole limit divided again after {seconds(d['share_back_after_s'])}"
        )
        if "rejoined_after_s" in d:
            ghost += f" (it re-joined {seconds(d['rejoined_after_s'])} after waking)"
    if "excess_leases" in d:
        ghost = (
            f"none vanished; the joiner came after {seconds(d['joined_at_s'])}; {d['excess_leases']} leases "
            f"above the new shares kept free; settled after {seconds(d['settled_after_s'])}, the whole "
            f"limit held again after {seconds(d['full_again_after_s'])}"
        )
    m = d["machine"]
    load = " / ".join(map(str, m["load_average"]))
    return (
        f"| {CASES[case]} | {d['hold_seconds']:g} s | **{d['max_fleet_in_flight']}** / {d['limit']} "
        f"| {d['admitted']} / {d['refused']} | {seconds(d['recovered_after_s'])} | {ghost} "
        f"| {d['measured_at']}, load {load} |"
    )


def table(summary: Doc) -> list[str]:
    """The table of every case in ``summary``, and the machine it was measured on."""
    cases = summary.get("cases", {})
    if not cases:
        return ["No fault figures collected yet: run `pytest tests/faults`, then `make docs`."]
    first = next(iter(cases.values()))
    m = first["machine"]
    out = [
        f"From [faults.json](faults.json): {first['instances']} instances, {first['clients']} clients, "
        f"`maxConcurrentRequests: {first['limit']}`, leases counted on the clients' side; "
        f"{m['cpus']} cores, Python {m['python']}, Redis {m['redis']}, {m['platform']} (load average "
        "1 / 5 / 15 min when written: the machine is shared).",
        "",
        "| fault | each job holds its lease | max held at once / limit | admitted / refused | "
        "30 more admitted after | the vanished instance | measured |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    out += [row(c, cases[c]) for c in CASES if c in cases]
    budgets = [c for c in BUDGET_CASES if c in cases]
    if budgets:
        d = cases[budgets[0]]
        out += [
            "",
            f"The window and credit budgets through the same faults ({d['instances']} instances, "
            f"{d['clients']} clients: `tokensPerMinute: {d['tokens_per_minute']}` with jobs of "
            f"{d['job_tokens']} tokens, and one key of {d['credits']} credits, both spent "
            "in the first second; counted on the clients' side):",
            "",
            "| fault | most tokens admitted in a minute / limit | credits allowed / budget | "
            "answers | measured |",
            "| --- | --- | --- | --- | --- |",
            *[budget_row(c, cases[c]) for c in budgets],
        ]
    return out


def budget_row(case: str, d: Doc) -> str:
    answers = ", ".join(f"{k}: {n}" for k, n in d["answers"].items())
    load = " / ".join(map(str, d["machine"]["load_average"]))
    minutes = f"{d['minutes']} minute{'s' if d['minutes'] != 1 else ''}"
    return (
        f"| {BUDGET_CASES[case]} | **{d['max_tokens_in_a_minute']}** / {d['tokens_per_minute']} ({minutes}) "
        f"| **{d['credits_allowed']}** / {d['credits']} | {answers} "
        f"| {d['measured_at']}, load {load} |"
    )


def marker(end: bool = False) -> str:
    if end:
        return f"<!-- end generated: {SECTION} -->"
    return f"<!-- begin generated: {SECTION} (from docs/faults.json by `make docs`; do not edit) -->"


def fill(text: str, lines: list[str]) -> str:
    """``text`` with the section between the markers replaced by ``lines``."""
    pattern = re.compile(re.escape(marker()) + r"\n.*?" + re.escape(marker(end=True)), flags=re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"{DOC}: no markers for the generated section {SECTION!r}: add {marker()!r}")
    block = "\n".join([marker(), *lines, marker(end=True)])
    return pattern.sub(lambda _: block, text)


def render(root: Path = ROOT, summary: Path | None = None) -> dict[Path, str]:
    """docs/fleet.md's full text with the table filled in from ``summary`` (docs/faults.json)."""
    path = summary or root / "docs" / "faults.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    return {root / DOC: fill((root / DOC).read_text(), table(doc))}
