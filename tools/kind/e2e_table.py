"""The markdown table of e2e record files (tests/results/e2e/*.json), for docs/e2e.md.

    .venv/bin/python -P tools/kind/e2e_table.py RECORD.json [RECORD.json ...]
    .venv/bin/python -P tools/kind/e2e_table.py --update docs/e2e.md RECORD.json ...

One row per test of each record: its outcome, seconds and headline figures, as the run recorded them;
then a line per record with its whole duration. ``--update`` replaces what is between the markers
``<!-- e2e-kind-table:begin -->`` and ``<!-- e2e-kind-table:end -->`` in the named file.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

BEGIN, END = "<!-- e2e-kind-table:begin -->", "<!-- e2e-kind-table:end -->"


def table(paths: list[Path]) -> str:
    lines = ["| record | test | outcome | seconds | figures |", "| --- | --- | --- | --- | --- |"]
    totals = []
    for path in paths:
        doc = json.loads(path.read_text())
        for row in doc["summary"]:
            figures = str(row.get("figures") or "").replace("|", "/")
            cells = [f"`{path.name}`", f"`{row['test']}`", row["outcome"], str(row["seconds"]), figures]
            lines.append("| " + " | ".join(cells) + " |")
        outcomes = [row["outcome"] for row in doc["summary"]]
        passed = sum(o == "passed" for o in outcomes)
        totals.append(
            f"- `{path.name}` ({doc['cluster']}, scale pods {doc['settings'].get('scale_pods')}): "
            f"{passed} of {len(outcomes)} passed, {doc['durationSeconds']} s from its start to the end "
            f"of its last test ({doc['startedAt']} to {doc['finishedAt']})"
        )
    return "\n".join([*lines, "", *totals])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path)
    parser.add_argument("--update", type=Path, help="a markdown file with the table's markers")
    args = parser.parse_args()
    text = table(args.records)
    if args.update is None:
        print(text)
        return
    doc = args.update.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{args.update}: no {BEGIN} ... {END} markers")
    args.update.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", doc))


if __name__ == "__main__":
    main()
