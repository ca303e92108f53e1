"""Generated documentation stays in step with the code that generates it."""

from __future__ import annotations

from tests.support.tools import ROOT, load_tool


def test_examples_doc_is_current() -> None:
    gen = load_tool("gen_docs")
    assert (ROOT / "docs" / "examples.md").read_text() == gen.render(), "stale: run `make docs`"
