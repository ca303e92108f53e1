"""Window budgets: UTC-aligned windows, reserve, refund in the same window, overage, grants."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from limiter.core.budgets import BudgetLedger, Reservation, Shortfall, window_end, window_id
from tests.unit.conftest import make_spec

MIDNIGHT = 1_700_006_400.0  # 2023-11-15T00:00:00Z, a UTC day boundary
SPEC = make_spec(
    [{"name": "m", "limits": {"tokensPerMinute": 100, "requestsPerMinute": 3, "tokensPerDay": 250}}],
    [{"name": "A", "ratio": 1.0, "estimate": {"tokens": 40, "requests": 1}}],
)


def test_windows_are_aligned_to_utc_minutes_and_days() -> None:
    assert MIDNIGHT % 86400 == 0
    assert window_id(MIDNIGHT - 0.001, 60) + 1 == window_id(MIDNIGHT, 60)
    assert window_end(MIDNIGHT + 59.9, 60) == MIDNIGHT + 60
    assert window_end(MIDNIGHT + 3600, 86400) == MIDNIGHT + 86400


def test_reserve_until_spent_then_wait_for_next_window() -> None:
    ledger = BudgetLedger(SPEC)
    now = MIDNIGHT + 10
    assert isinstance(ledger.try_reserve("m", {"tokens": 40, "requests": 1}, now), Reservation)
    assert isinstance(ledger.try_reserve("m", {"tokens": 40, "requests": 1}, now), Reservation)
    blocked = ledger.try_reserve("m", {"tokens": 40, "requests": 1}, now)
    assert isinstance(blocked, Shortfall)
    assert blocked.needs == {"tokensPerMinute": 20} and blocked.retry_at == MIDNIGHT + 60
    # Nothing was taken by the refused reservation (all or nothing across dimensions).
    assert ledger.snapshot(now)["m"]["requestsPerMinute"]["used"] == 2
    assert isinstance(ledger.try_reserve("m", {"tokens": 40, "requests": 1}, MIDNIGHT + 60), Reservation)


def test_day_window_binds_across_minutes() -> None:
    ledger = BudgetLedger(SPEC)
    for minute in range(6):
        ledger.try_reserve("m", {"tokens": 40, "requests": 1}, MIDNIGHT + 60 * minute)
    blocked = ledger.try_reserve("m", {"tokens": 40, "requests": 1}, MIDNIGHT + 400)
    assert isinstance(blocked, Shortfall) and blocked.needs == {"tokensPerDay": 30}
    assert blocked.retry_at == MIDNIGHT + 86400


def test_refund_in_the_same_window_is_usable_at_once() -> None:
    ledger = BudgetLedger(SPEC)
    now = MIDNIGHT + 5
    r1 = ledger.try_reserve("m", {"tokens": 40, "requests": 1}, now)
    ledger.try_reserve("m", {"tokens": 40, "requests": 1}, now)
    assert isinstance(r1, Reservation)
    s = ledger.settle(r1, {"tokens": 10, "requests": 1}, now + 1)
    assert s.refunded == {"tokensPerMinute": 30, "tokensPerDay": 30}
    assert isinstance(ledger.try_reserve("m", {"tokens": 40, "requests": 1}, now + 2), Reservation)


def test_no_refund_after_the_window_rolled_and_overage_is_charged_now() -> None:
    ledger = BudgetLedger(SPEC)
    r = ledger.try_reserve("m", {"tokens": 40, "requests": 1}, MIDNIGHT + 50)
    assert isinstance(r, Reservation)
    s = ledger.settle(r, {"tokens": 10}, MIDNIGHT + 70)
    assert "tokensPerMinute" not in s.refunded and s.refunded == {"tokensPerDay": 30}
    r2 = ledger.try_reserve("m", {"tokens": 40, "requests": 1}, MIDNIGHT + 80)
    assert isinstance(r2, Reservation)
    s2 = ledger.settle(r2, {"tokens": 90, "requests": 1}, MIDNIGHT + 85)
    assert s2.charged == {"tokensPerMinute": 50, "tokensPerDay": 50}
    assert ledger.snapshot(MIDNIGHT + 85)["m"]["tokensPerMinute"]["used"] == 90


def test_granted_mode_needs_grants_and_hands_back_surplus() -> None:
    ledger = BudgetLedger(SPEC, mode="granted")
    now = MIDNIGHT + 1
    short = ledger.try_reserve("m", {"tokens": 40, "requests": 1}, now)
    assert isinstance(short, Shortfall)
    assert short.needs == {"tokensPerMinute": 40, "requestsPerMinute": 1, "tokensPerDay": 40}
    w_min, w_day = window_id(now, 60), window_id(now, 86400)
    ledger.add_grant("m", "tokensPerMinute", w_min, 80, now)
    ledger.add_grant("m", "requestsPerMinute", w_min, 2, now)
    ledger.add_grant("m", "tokensPerDay", w_day, 80, now)
    r = ledger.try_reserve("m", {"tokens": 40, "requests": 1}, now)
    assert isinstance(r, Reservation)
    back = sorted(ledger.take_surplus(now))
    assert back == [
        ("m", "requestsPerMinute", w_min, 1),
        ("m", "tokensPerDay", w_day, 40),
        ("m", "tokensPerMinute", w_min, 40),
    ]
    # Overage beyond what the instance holds must be charged to the fleet counter.
    s = ledger.settle(r, {"tokens": 70, "requests": 1}, now)
    assert s.over_grant == {"tokensPerMinute": 30, "tokensPerDay": 30}
    # A grant for a window that is already over is dropped.
    ledger.add_grant("m", "tokensPerMinute", w_min - 1, 1000, now)
    assert ledger.snapshot(now)["m"]["tokensPerMinute"]["capacity"] == 70


def test_redis_clock_ahead_at_the_boundary_moves_the_ledger_forward_never_back() -> None:
    ledger = BudgetLedger(SPEC, mode="granted")
    before = MIDNIGHT + 59.998  # this instance's clock; Redis is already in the next minute
    w_next = window_id(MIDNIGHT + 60, 60)
    assert ledger.add_grant("m", "tokensPerMinute", w_next, 80, before)
    assert ledger.snapshot(before)["m"]["tokensPerMinute"] == {
        "window": w_next, "capacity": 80, "used": 0, "remaining": 80
    }  # fmt: skip
    # A grant for the window this clock still shows is refused: Redis has left it.
    assert not ledger.add_grant("m", "tokensPerMinute", w_next - 1, 50, before)
    assert ledger.snapshot(MIDNIGHT + 60.5)["m"]["tokensPerMinute"]["capacity"] == 80


def test_policy_update_keeps_usage_and_applies_new_limits() -> None:
    ledger = BudgetLedger(SPEC)
    ledger.try_reserve("m", {"tokens": 40, "requests": 1}, MIDNIGHT)
    bigger = make_spec(
        [{"name": "m", "limits": {"tokensPerMinute": 1000}}],
        [{"name": "A", "ratio": 1.0, "estimate": {"tokens": 40}}],
    )
    ledger.update_policy(bigger)
    snap = ledger.snapshot(MIDNIGHT + 1)["m"]
    assert list(snap) == ["tokensPerMinute"] and snap["tokensPerMinute"]["used"] == 40
    assert snap["tokensPerMinute"]["remaining"] == 960


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 80), st.floats(0, 20)), max_size=80))
def test_never_admits_more_than_the_limit_in_a_window(jobs: list[tuple[int, int, float]]) -> None:
    spec = make_spec(
        [{"name": "m", "limits": {"tokensPerMinute": 100}}],
        [{"name": "A", "ratio": 1.0, "estimate": {"tokens": 1}}],
    )
    ledger = BudgetLedger(spec)
    now = MIDNIGHT
    admitted: dict[int, int] = {}
    for estimate, actual, dt in jobs:
        now += dt
        r = ledger.try_reserve("m", {"tokens": estimate}, now)
        if isinstance(r, Reservation):
            w = window_id(now, 60)
            admitted[w] = admitted.get(w, 0) + estimate
            ledger.settle(r, {"tokens": min(actual, estimate)}, now)
            admitted[w] -= estimate - min(actual, estimate)
            assert admitted[w] <= 100
