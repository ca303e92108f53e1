"""The pure core imports no I/O library: Redis, HTTP and Kubernetes live in the adapters only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PURE = ["policy", "allocation", "jobtypes", "budgets", "clock"]
FORBIDDEN = {"redis", "aiohttp", "kopf", "kubernetes", "asyncio", "socket", "httpx", "time", "requests"}
LIMITER = Path(__file__).parents[2] / "limiter"


@pytest.mark.parametrize("module", PURE)
def test_pure_module_has_no_io_imports(module: str) -> None:
    tree = ast.parse((LIMITER / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
            if node.module == "limiter":
                imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("limiter."):
            imported.add(node.module.split(".")[1])
    limiter_deps = {m.split(".")[-1] for m in imported} & {p.stem for p in LIMITER.glob("*.py")}
    # Only the clock module may read the time; everything else is handed a clock.
    forbidden = FORBIDDEN - {"time"} if module == "clock" else FORBIDDEN
    assert not imported & forbidden, f"{module} imports {imported & forbidden}"
    assert limiter_deps <= set(PURE), f"{module} depends on adapters {limiter_deps - set(PURE)}"
