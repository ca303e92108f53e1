"""Generated documentation stays in step with the code that generates it."""

from __future__ import annotations

from tests.support.tools import ROOT, load_tool


def test_examples_doc_is_current() -> None:
    gen = load_tool("gen_docs")
    assert (ROOT / "docs" / "examples.md").read_text() == gen.render(), "stale: run `make docs`"


def test_benchmark_sections_are_current() -> None:
    """README.md's and bench/README.md's figures are the latest bench/results/*.json, rendered."""
    gen = load_tool("gen_docs")
    for path, text in gen.report.render(ROOT).items():
        assert path.read_text() == text, f"stale: {path.relative_to(ROOT)}: run `make docs`"
