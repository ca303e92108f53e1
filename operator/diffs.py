"""Whether an object in the cluster already is what the operator wants it to be.

Pure. The operator writes only when :func:`differences` finds something, so a restart, a resume
or a repeated event never touches an object (no new resourceVersion, no rollout). The comparison
is a subset check: fields the API server fills in (defaults, ``clusterIP``, annotations of other
controllers) are not differences; every field the operator sets must be there with its value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from limiter.k8s.quantity import quantity


def _same_scalar(want: Any, have: Any) -> bool:
    if isinstance(want, bool) or isinstance(have, bool):
        return want is have  # True == 1 in Python, not in Kubernetes
    if want == have:
        return True
    if isinstance(want, str) and isinstance(have, str):
        a, b = quantity(want), quantity(have)
        return a is not None and a == b
    return False


def differences(want: Any, have: Any, path: str = "") -> list[str]:
    """Where ``have`` lacks what ``want`` sets, as ``path: have -> want`` lines (empty: nothing to do).

    Mappings: every key of ``want`` must match in ``have`` (extra keys in ``have`` are fine).
    Lists: same length, item by item (order matters, as it does for containers and ports).
    """
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return [f"{path or '.'}: {_short(have)} -> an object"]
        out: list[str] = []
        for key, value in want.items():
            sub = f"{path}.{key}"
            if key not in have:
                out.append(f"{sub}: missing -> {_short(value)}")
            else:
                out += differences(value, have[key], sub)
        return out
    if isinstance(want, list):
        if not isinstance(have, list) or len(have) != len(want):
            return [f"{path}: {_short(have)} -> {_short(want)}"]
        out = []
        for i, (w, h) in enumerate(zip(want, have, strict=True)):
            out += differences(w, h, f"{path}[{i}]")
        return out
    return [] if _same_scalar(want, have) else [f"{path}: {_short(have)} -> {_short(want)}"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
