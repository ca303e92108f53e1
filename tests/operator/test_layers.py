"""The operator's pure modules import no I/O library: builders and status are tested without a cluster."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

OPERATOR = Path(__file__).parents[2] / "operator"
PURE = ["builders", "status", "diffs", "settings"]
FORBIDDEN = {"kopf", "kubernetes", "redis", "aiohttp", "asyncio", "socket", "urllib3", "requests", "time"}
ADAPTERS = {"handlers", "kube", "projection", "main", "metrics", "uninstall"}


@pytest.mark.parametrize("module", PURE)
def test_pure_module_has_no_io_imports(module: str) -> None:
    imported: set[str] = set()
    for node in ast.walk(ast.parse((OPERATOR / f"{module}.py").read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
            if node.module.startswith("limiter."):
                imported.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            imported.add(node.module or "")
    assert not imported & FORBIDDEN, f"{module} imports {imported & FORBIDDEN}"
    assert not imported & ADAPTERS, f"{module} depends on adapters {imported & ADAPTERS}"
    assert not imported & {"store", "http", "instance", "serve"}, f"{module} imports a limiter adapter"
