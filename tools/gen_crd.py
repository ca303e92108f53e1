"""Write the generated CRDs and the CRD reference from the policy and status models.

    python -P tools/gen_crd.py          # (re)write every generated file
    python -P tools/gen_crd.py --check  # exit 1 naming the stale files, write nothing

tests/operator/test_crd.py fails when a committed file is stale.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from limiter.k8s import crd

ROOT = Path(__file__).resolve().parents[1]

#: Every generated file and the function that renders it.
OUTPUTS: dict[str, Callable[[], str]] = {
    "crds/ratelimitpolicies.yaml": crd.render_crd_yaml,
    "crds/kopf-peering.yaml": crd.render_peering_yaml,
    "charts/fleet-limiter/crds/ratelimitpolicies.yaml": crd.render_crd_yaml,
    "charts/fleet-limiter/crds/kopf-peering.yaml": crd.render_peering_yaml,
    "docs/crd-reference.md": crd.render_reference,
}


def stale() -> list[str]:
    """The generated files whose content differs from what the models give (or that are missing)."""
    out = []
    for rel, render in OUTPUTS.items():
        path = ROOT / rel
        if not path.exists() or path.read_text(encoding="utf-8") != render():
            out.append(rel)
    return out


def main(argv: list[str]) -> int:
    if "--check" in argv:
        files = stale()
        for rel in files:
            print(f"stale: {rel} (run `python -P tools/gen_crd.py`)", file=sys.stderr)
        return 1 if files else 0
    for rel, render in OUTPUTS.items():
        path = ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = render()
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
