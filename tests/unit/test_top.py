"""`fleet-limiter top`'s rendering, from snapshots as the instances answer them (no network)."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from limiter.top import render, short_names


@pytest.mark.parametrize(
    ("names", "labels"),
    [
        (["i-8080"], ["i-8080"]),
        (["i-8080", "i-8081"], ["8080", "8081"]),
        (["chat-limiter-7d9f8-xk2p9", "chat-limiter-7d9f8-ab3cd"], ["xk2p9", "ab3cd"]),
        (["host-1234-aaaaaa", "host-1235-bbbbbb"], ["1234-aaaaaa", "1235-bbbbbb"]),
        (["worker-a-very-long-suffix-1", "worker-a-very-long-suffix-2"], ["1", "2"]),
        (["a" * 20 + "1", "b" * 20 + "1"], ["aaaaaaaaaaa…", "bbbbbbbbbbb…"]),
        (["x-" + "a" * 20 + "1", "x-" + "a" * 20 + "2"], ["#1", "#2"]),  # alike once cut: numbered
    ],
)
def test_short_names_tell_instances_apart(names: list[str], labels: list[str]) -> None:
    assert short_names(names) == labels


def snapshot(iid: str, port: int, queues: dict[str, Any] | None = None) -> dict[str, Any]:
    share = {
        "tokensPerMinute": 50000,
        "requestsPerMinute": None,
        "tokensPerDay": None,
        "requestsPerDay": None,
    }
    return {
        "url": f"http://127.0.0.1:{port}",
        "allocation": {
            "instanceId": iid,
            "generation": 1,
            "allocation": {"instanceCount": 2, "pools": {"m": {"totalSlots": 5, **share}}},
            "slotsByJobTypeAndModel": {"chat": {"m": {"slots": 5, **share, "maxConcurrentRequests": 4}}},
            "jobTypes": {
                "chat": {"currentRatio": 1.0, "initialRatio": 1.0, "flexible": True, "inFlight": 1,
                         "waiting": 0, "allocatedSlots": 5},
            },
        },
        "health": {"redis": {"connected": True}},
        "queues": queues or {},
    }  # fmt: skip


def text(snaps: list[dict[str, Any]], width: int = 80) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(render(snaps))
    return console.export_text()


def test_long_ids_and_urls_stay_whole_and_distinct_at_80_columns() -> None:
    a = "fleet-limiter-team-a-chat-5f7c9d8b6-x2k9q"
    b = "fleet-limiter-team-a-chat-5f7c9d8b6-p4m7z"
    out = text([snapshot(a, 41001), snapshot(b, 41002)])
    assert max(len(line) for line in out.splitlines()) <= 80
    rows: list[list[str]] = []  # the fleet table's rows, their cells folded over lines joined again
    lines = out.splitlines()
    body = lines[lines.index(next(x for x in lines if x.startswith("┡"))) + 1 :]
    for line in body:
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) != 8:
            break  # the end of the fleet table
        if cells[0]:
            rows.append(cells)
        else:
            rows[-1] = [x + y for x, y in zip(rows[-1], cells, strict=True)]
    assert [r[:3] for r in rows] == [["x2k9q", a, "127.0.0.1:41001"], ["p4m7z", b, "127.0.0.1:41002"]]
    assert "x2k9q" in out and "p4m7z" in out  # the per-instance columns' labels


def test_pools_show_every_limit_column_of_plan_and_the_proxy_queues() -> None:
    q = {"models": {"m": {"active_requests": 2, "parallel_limit": 4, "queued_requests": 3, "queue_limit": 8,
                          "total_processed": 10, "total_rejected": 1, "avg_wait_time_ms": 1.0,
                          "avg_processing_time_ms": 2.0}}}  # fmt: skip
    out = text([snapshot("i-1", 1, q), snapshot("i-2", 2, q)], width=120)
    for column in ("TPM", "RPM", "TPD", "RPD", "concurrent"):
        assert column in out
    pools = next(line for line in out.splitlines() if line.startswith("│ m ") and "50.0K" in line)
    assert pools.split("│")[-2].strip() == "4"  # maxConcurrentRequests / N
    assert "proxy queues" in out and "2/4 3/8" in out
    row = next(line for line in out.splitlines() if "2/4 3/8" in line)
    assert row.split("│")[-3].strip() == "20" and row.split("│")[-2].strip() == "2"  # summed over instances


def test_no_queue_table_without_proxied_models() -> None:
    assert "proxy queues" not in text([snapshot("i-1", 1)])


def test_shadow_models_show_their_mode_and_what_enforcing_would_have_refused() -> None:
    a, b = snapshot("i-1", 1), snapshot("i-2", 2)
    for snap, counts in ((a, {"m": {"queue_full": 3, "parallel_limit": 1}}), (b, {"m": {"queue_full": 2}})):
        snap["allocation"].update(mode="shadow", modes={"m": "shadow"}, wouldRefuse=counts)
    out = text([a, b], width=120)
    assert "shadow mode (spec.mode shadow)" in out
    row = next(line for line in out.splitlines() if "parallel_limit 1, queue_full 5" in line)
    assert [c.strip() for c in row.split("│")[1:-1]][:4] == ["m", "shadow", "4", "2"]


def test_no_shadow_table_while_enforcing_with_nothing_counted() -> None:
    snap = snapshot("i-1", 1)
    snap["allocation"].update(mode="enforce", modes={"m": "enforce"}, wouldRefuse={})
    assert "shadow mode" not in text([snap]) and "shadow mode" not in text([snapshot("i-2", 2)])
