"""Refusals that explain themselves (limiter.core.refusals) and rate-limit headers
(limiter.core.ratelimit): the pure parts, on a fake clock."""

from __future__ import annotations

import math
from typing import Any

import pytest

from limiter.core.admission import JobTypeManager, QueueFull
from limiter.core.allocation import compute_allocation
from limiter.core.budgets import BudgetLedger
from limiter.core.clock import FakeClock
from limiter.core.ratelimit import WindowView, minute_windows, openai_duration, rate_limit_headers
from limiter.core.refusals import (
    CAPACITY_REASONS,
    MESSAGES,
    Limit,
    Refusal,
    RefusalReason,
    credits_refusal,
    retry_after_seconds,
)
from tests.unit.conftest import make_spec

#: 12:00:00 UTC on a day: minute windows start here.
MINUTE_START = 1_700_000_040.0


def manager(
    jobs: list[dict[str, Any]], limits: dict[str, int], gate: bool = False, **extra: Any
) -> tuple[JobTypeManager, FakeClock]:
    spec = make_spec([{"name": "m", "limits": limits}], jobs, **extra)
    clock = FakeClock(MINUTE_START)
    ledger = BudgetLedger(spec) if gate else None
    return JobTypeManager(spec, compute_allocation(spec, 1), clock, gate=ledger), clock


def test_every_reason_has_a_message_and_codes_are_snake_case() -> None:
    assert set(MESSAGES) == set(RefusalReason)
    assert RefusalReason.INVALID not in CAPACITY_REASONS
    for r in RefusalReason:
        assert r.value == r.value.lower() and " " not in r.value


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(0.0, 1), (0.2, 1), (1.0, 1), (1.01, 2), (12.5, 13), (math.nan, 1), (-3, 1)],
)
def test_retry_after_is_whole_seconds_at_least_one(seconds: float, header: int) -> None:
    assert retry_after_seconds(seconds) == header


def test_refusal_json_headers_and_message() -> None:
    r = Refusal(
        RefusalReason.QUEUE_FULL,
        Limit("maxWaiting", job_type="summary", value=4),
        retry_after=2.4,
        position=5,
        estimated_start=2.4,
    )
    assert r.to_json() == {
        "reason": "queue_full",
        "retryAfterSeconds": 3,
        "limit": {"name": "maxWaiting", "jobType": "summary", "value": 4},
        "position": 5,
        "estimatedStartSeconds": 2.4,
    }
    assert r.headers() == {"Retry-After": "3", "retry-after-ms": "2400"}
    assert r.message() == "the queue of job type 'summary' is full (4 waiting); retry after 3 s"


def test_credits_without_a_refill_never_free() -> None:
    r = credits_refusal(3, None)
    assert r.headers() == {} and r.to_json()["retryAfterSeconds"] is None
    assert "does not free by itself" in r.message()
    assert credits_refusal(0, 7.2).headers()["Retry-After"] == "8"


def test_parallel_limit_retry_after_is_the_earliest_lease_end() -> None:
    m, clock = manager([{"name": "a", "ratio": 1.0}], {"maxConcurrentRequests": 2})
    first = m.submit("a")
    clock.advance(4)
    m.release(first)  # one lease held 4 s: the expected hold time
    held = [m.submit("a"), m.submit("a")]
    clock.advance(1)
    with pytest.raises(QueueFull) as err:
        m.submit("a", wait_seconds=0)
    refusal = err.value.refusal
    assert refusal is not None and refusal.reason is RefusalReason.PARALLEL_LIMIT
    assert refusal.limit == Limit("slots", model="m", job_type="a", value=2)
    assert refusal.retry_after == pytest.approx(3.0)  # granted 1 s ago, expected to run 4 s
    assert all(t.state == "granted" for t in held)


def test_queue_full_names_max_waiting_with_position_and_drain_time() -> None:
    jobs = [{"name": "a", "ratio": 1.0, "queue": {"maxWaiting": 2, "maxWaitSeconds": 60}}]
    m, clock = manager(jobs, {"maxConcurrentRequests": 1})
    lease = m.submit("a")
    clock.advance(2)
    m.release(lease)  # expected hold: 2 s
    m.submit("a")
    waiting = [m.submit("a"), m.submit("a")]
    assert [t.state for t in waiting] == ["waiting", "waiting"]
    with pytest.raises(QueueFull) as err:
        m.submit("a")
    refusal = err.value.refusal
    assert refusal is not None and refusal.reason is RefusalReason.QUEUE_FULL
    assert refusal.limit == Limit("maxWaiting", job_type="a", value=2)
    assert refusal.position == 3
    # The running lease ends in 2 s, then two waiting jobs of 2 s each run on the one slot.
    assert refusal.retry_after == pytest.approx(6.0) == refusal.estimated_start
    assert m.refusal(waiting[1]).position == 2


def test_window_spent_names_the_window_and_retries_at_its_end() -> None:
    jobs = [{"name": "a", "ratio": 1.0, "estimate": {"tokens": 600}}]
    m, clock = manager(jobs, {"tokensPerMinute": 1000}, gate=True)  # one slot
    m.release(m.submit("a"))  # the slot is back, 600 of the minute's 1000 tokens are spent
    clock.advance(13)
    with pytest.raises(QueueFull) as err:
        m.submit("a", wait_seconds=0)
    refusal = err.value.refusal
    assert refusal is not None and refusal.reason is RefusalReason.WINDOW_SPENT
    assert refusal.limit == Limit(
        "tokensPerMinute", model="m", dimension="tokens", window="minute", value=1000
    )
    assert refusal.retry_after == pytest.approx(47.0)
    assert refusal.headers()["Retry-After"] == "47"
    # What the fleet said wins over the local windows.
    m.fleet_windows = lambda model: ("tokensPerMinute", 5.5)
    with pytest.raises(QueueFull) as err:
        m.submit("a", wait_seconds=0)
    assert err.value.refusal is not None and err.value.refusal.retry_after == 5.5


def test_memory_limit_names_the_memory_budget() -> None:
    jobs = [{"name": "a", "ratio": 1.0, "estimate": {"memoryKB": 1024}}]
    m, _ = manager(jobs, {"maxConcurrentRequests": 5}, instance={"memoryBudgetMB": 1})
    m.submit("a")
    with pytest.raises(QueueFull) as err:
        m.submit("a", wait_seconds=0)
    refusal = err.value.refusal
    assert refusal is not None and refusal.reason is RefusalReason.MEMORY_LIMIT
    assert refusal.limit == Limit("memoryBudgetMB", value=1)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.02, "20ms"),
        (0.0004, "1ms"),
        (1, "1s"),
        (6.5, "6.5s"),
        (360, "6m0s"),
        (61.25, "1m1.25s"),
        (3600, "1h0m0s"),
    ],
)
def test_openai_duration_format(seconds: float, text: str) -> None:
    assert openai_duration(seconds) == text


def test_rate_limit_headers_of_both_minute_limits() -> None:
    views = [
        WindowView("requestsPerMinute", 500, 499, 12.5),
        WindowView("tokensPerMinute", 100_000, 4200, 12.5),
    ]
    assert rate_limit_headers(views) == {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "12.5s",
        "x-ratelimit-limit-tokens": "100000",
        "x-ratelimit-remaining-tokens": "4200",
        "x-ratelimit-reset-tokens": "12.5s",
        "RateLimit-Policy": '"rpm";q=500;w=60, "tpm";q=100000;w=60;qu="tokens"',
        "RateLimit": '"rpm";r=499;t=13, "tpm";r=4200;t=13',
    }
    assert rate_limit_headers([]) == {}


def test_minute_windows_add_the_fleets_last_word_to_what_this_instance_holds() -> None:
    spec = make_spec(
        [{"name": "m", "limits": {"tokensPerMinute": 1000, "tokensPerDay": 5000}}],
        [{"name": "a", "ratio": 1.0, "estimate": {"tokens": 100}}],
    )
    ledger = BudgetLedger(spec, mode="granted")
    now = MINUTE_START + 20
    window = int(now // 60)
    assert ledger.add_grant("m", "tokensPerMinute", window, 300, now)
    assert ledger.add_grant("m", "tokensPerDay", int(now // 86400), 300, now)
    ledger.try_reserve("m", {"tokens": 100}, now)
    # The fleet had 500 left after this instance drew 300, of which it has spent 100.
    (view,) = minute_windows(ledger, "m", {("m", "tokensPerMinute"): (window, 500)}, now)
    assert (view.limit_name, view.limit, view.remaining) == ("tokensPerMinute", 1000, 700)
    assert view.reset_seconds == pytest.approx(40.0)
    # Nothing heard from the fleet in this window: the limit less what this instance used.
    (view,) = minute_windows(ledger, "m", {("m", "tokensPerMinute"): (window - 1, 0)}, now)
    assert view.remaining == 900
