"""Write docs/openapi.json, the OpenAPI 3.1 document of the HTTP API (`make docs`); `--check` exits 1
when it is stale (tests/unit/test_openapi.py runs that)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from limiter.openapi import document

OUT = ROOT / "docs" / "openapi.json"


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=False) + "\n"


def main() -> None:
    if "--check" in sys.argv[1:]:
        sys.exit(0 if OUT.exists() and OUT.read_text() == render() else 1)
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
