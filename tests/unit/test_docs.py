"""Generated documentation stays in step with the code that generates it."""

from __future__ import annotations

import json

from tests.support.tools import ROOT, load_tool


def test_examples_doc_is_current() -> None:
    gen = load_tool("gen_docs")
    assert (ROOT / "docs" / "examples.md").read_text() == gen.render(), "stale: run `make docs`"


def test_benchmark_sections_are_current() -> None:
    """README.md's and bench/README.md's figures are the latest bench/results/*.json, rendered."""
    gen = load_tool("gen_docs")
    for path, text in gen.report.render(ROOT).items():
        assert path.read_text() == text, f"stale: {path.relative_to(ROOT)}: run `make docs`"


def test_e2e_kind_table_is_the_kept_runs() -> None:
    """docs/e2e.md's table of kind runs is docs/e2e-kind.json (the condensed records), rendered."""
    gen = load_tool("kind/e2e_table")
    runs = json.loads((ROOT / "docs" / "e2e-kind.json").read_text())
    assert runs and all(run["cluster"] == "kubeconfig" for run in runs)
    assert gen.section((ROOT / "docs" / "e2e.md").read_text()) == gen.table(runs), (
        "stale: run tools/kind/e2e_table.py --keep docs/e2e-kind.json --update docs/e2e.md"
    )
