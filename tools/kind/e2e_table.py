"""The e2e runs kept for the docs: condensed record files (tests/results/e2e/*.json) and their table.

    .venv/bin/python -P tools/kind/e2e_table.py --keep docs/e2e-kind.json RECORD.json [RECORD.json ...]
    .venv/bin/python -P tools/kind/e2e_table.py --keep docs/e2e-kind.json --update docs/e2e.md [RECORD ...]

A record file has every event of a run (megabytes, git-ignored); ``--keep`` writes what the docs
quote of each named record (its summary rows, every test's figures, the settings and times) to a
small JSON file that is committed. The table has one row per test of each kept run: its outcome,
seconds and headline figures, as the run recorded them; then a line per run with its whole
duration. ``--update`` replaces what is between the markers ``<!-- e2e-kind-table:begin -->`` and
``<!-- e2e-kind-table:end -->`` in the named file with the table of the kept runs
(tests/unit/test_docs.py fails when it is stale).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- e2e-kind-table:begin -->", "<!-- e2e-kind-table:end -->"


def condense(path: Path) -> dict[str, Any]:
    """What the docs keep of one record file."""
    doc = json.loads(path.read_text())
    return {
        "record": path.name,
        "cluster": doc["cluster"],
        "settings": doc["settings"],
        "startedAt": doc["startedAt"],
        "finishedAt": doc["finishedAt"],
        "durationSeconds": doc["durationSeconds"],
        "summary": doc["summary"],
        "figures": {t["test"]: t["figures"] for t in doc["tests"]},
    }


def table(runs: list[dict[str, Any]]) -> str:
    lines = ["| record | test | outcome | seconds | figures |", "| --- | --- | --- | --- | --- |"]
    totals = []
    for run in runs:
        for row in run["summary"]:
            figures = str(row.get("figures") or "").replace("|", "/")
            cells = [f"`{run['record']}`", f"`{row['test']}`", row["outcome"], str(row["seconds"]), figures]
            lines.append("| " + " | ".join(cells) + " |")
        outcomes = [row["outcome"] for row in run["summary"]]
        passed = sum(o == "passed" for o in outcomes)
        totals.append(
            f"- `{run['record']}` ({run['cluster']}, scale pods {run['settings'].get('scale_pods')}): "
            f"{passed} of {len(outcomes)} passed, {run['durationSeconds']} s from its start to the end "
            f"of its last test ({run['startedAt']} to {run['finishedAt']})"
        )
    return "\n".join([*lines, "", *totals])


PATTERN = re.compile(re.escape(BEGIN) + "\n(.*?)\n" + re.escape(END), re.S)


def section(text: str) -> str:
    """The table between the markers of ``text``."""
    found = PATTERN.search(text)
    if found is None:
        raise SystemExit(f"no {BEGIN} ... {END} markers")
    return found.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "records", nargs="*", type=Path, help="record files to keep (replacing the kept runs)"
    )
    parser.add_argument("--keep", type=Path, required=True, help="the kept runs (docs/e2e-kind.json)")
    parser.add_argument("--update", type=Path, help="a markdown file with the table's markers")
    args = parser.parse_args()
    if args.records:
        runs = [condense(p) for p in args.records]
        args.keep.write_text(json.dumps(runs, indent=1) + "\n")
    runs = json.loads(args.keep.read_text())
    text = table(runs)
    if args.update is None:
        print(text)
        return
    doc = args.update.read_text()
    section(doc)  # the markers are there
    args.update.write_text(PATTERN.sub(lambda _: f"{BEGIN}\n{text}\n{END}", doc))


if __name__ == "__main__":
    main()
