"""The peers comparison's arithmetic: added latency comes from request pairs, and a ratio whose
denominator is not positive is null with a reason, never a nonsense number (a p99 difference of
-66.9 ms once produced a ratio of 1.49e9)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.peers.compare import ratio, ratios


@pytest.mark.parametrize(
    ("num", "den", "expected"),
    [
        (2.0, 4.0, {"value": 0.5}),
        (13.3, 0.0, {"value": None, "reason": "x: denominator 0 is not positive"}),
        (13.3, -66.9, {"value": None, "reason": "x: denominator -66.9 is not positive"}),
        (None, 1.0, {"value": None, "reason": "x: not measured"}),
    ],
)
def test_ratio(num: float | None, den: float | None, expected: dict[str, Any]) -> None:
    assert ratio(num, den, "x") == expected


def system(kind: str, p50: float, added_p50: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"concurrency": 1, "calls": 10, "p50_ms": p50, "p99_ms": p50, "in_process": True}
    row |= {"client_cpu_seconds": 1.0, "server_cpu_seconds": 0.0, "redis_cpu_seconds": 0.0}
    if added_p50 is not None:
        row |= {"added_method": "pairs", "added_p50_ms": added_p50, "added_p99_ms": added_p50}
    return {"kind": kind, "accuracy": [], "overhead": [row]}


def test_gateway_added_latency_is_the_pairs_never_a_subtraction() -> None:
    doc = {
        "systems": {
            "stand-in LLM direct": system("baseline", 5.0),
            "fleet-limiter proxy": system("gateway", 1.0, added_p50=-0.2),
            "litellm proxy": system("gateway", 20.0, added_p50=13.0),
        }
    }
    out = ratios(doc)
    ours = doc["systems"]["fleet-limiter proxy"]["overhead"][0]
    assert ours["added_p50_ms"] == -0.2  # as measured per pair, not p50 minus the direct run's p50
    one = out["pairs"]["litellm proxy"]["added_latency_peer_over_ours"]["1"]
    assert one["p50"] == {"value": None, "reason": "added p50 at 1 clients: denominator -0.2 is not positive"}
    assert out["pairs"]["litellm proxy"]["added_latency_peer_over_ours"]["10"]["p50"]["value"] is None
