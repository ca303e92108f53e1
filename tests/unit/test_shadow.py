"""Shadow mode in the pure core: the policy's modes, and the manager admitting what enforcing refuses."""

from __future__ import annotations

from typing import Any

import pytest

from limiter.core.admission import JobTypeManager, QueueFull
from limiter.core.allocation import compute_allocation
from limiter.core.budgets import BudgetLedger
from limiter.core.clock import FakeClock
from limiter.core.policy import PolicyError, parse_policy
from limiter.core.shadow import ShadowCounts
from tests.unit.conftest import make_spec

JOBS = [{"name": "j", "ratio": 1, "estimate": {"tokens": 100}, "queue": {"maxWaiting": 1}}]
MODELS = [
    {"name": "a", "limits": {"maxConcurrentRequests": 2}},
    {"name": "b", "limits": {"maxConcurrentRequests": 2, "tokensPerMinute": 300}},
]


def shadow_manager(
    mode: str = "shadow", models: list[dict[str, Any]] | None = None
) -> tuple[JobTypeManager, FakeClock, BudgetLedger]:
    spec = make_spec(models or MODELS, JOBS, mode=mode)
    clock, ledger = FakeClock(), BudgetLedger(spec)
    return JobTypeManager(spec, compute_allocation(spec, 1), clock, gate=ledger), clock, ledger


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        ({"mode": "dry-run"}, "spec.mode: \"dry-run\" is not valid: input should be 'enforce' or 'shadow'"),
        ({"mode": True}, "spec.mode: true is not valid: input should be 'enforce' or 'shadow'"),
        ({"mode": None}, "spec.mode: null is not valid: input should be 'enforce' or 'shadow'"),
        (
            {"models": [{"name": "a", "limits": {"maxConcurrentRequests": 1}, "mode": "Shadow"}]},
            "spec.models[0].mode: \"Shadow\" is not valid: input should be 'enforce' or 'shadow'",
        ),
    ],
)
def test_a_mode_other_than_enforce_or_shadow_names_the_field_and_the_valid_values(
    policy: dict[str, Any], problem: str
) -> None:
    data = {"models": MODELS[:1], "jobTypes": JOBS, **policy}
    with pytest.raises(PolicyError) as err:
        parse_policy(data)
    assert err.value.problems == [problem]


def test_a_models_mode_overrides_the_policys() -> None:
    enforce_a = [{**MODELS[0], "mode": "enforce"}, MODELS[1]]
    spec = make_spec(enforce_a, JOBS, mode="shadow")
    assert (spec.mode_of("a"), spec.mode_of("b")) == ("enforce", "shadow")
    assert spec.shadow_models() == {"b"}
    default = make_spec(MODELS, JOBS)
    assert default.mode == "enforce" and default.shadow_models() == frozenset()
    assert make_spec([MODELS[0], {**MODELS[1], "mode": "shadow"}], JOBS).shadow_models() == {"b"}


def test_shadow_admits_past_the_slots_and_the_queue_and_says_why() -> None:
    m, clock, _ = shadow_manager(models=MODELS[:1])
    held = [m.submit("j", wait_seconds=0) for _ in range(2)]
    assert [t.would_refuse for t in held] == [None, None]  # within the limits: a plain grant
    over = m.submit("j", wait_seconds=0)  # enforcing: 503 at once
    assert over.state == "granted" and over.would_refuse == "parallel_limit"
    queued = m.submit("j", wait_seconds=5)  # waits, as it would when enforcing
    assert queued.state == "waiting"
    full = m.submit("j", wait_seconds=5)  # maxWaiting 1: enforcing refuses it
    assert full.state == "granted" and full.would_refuse == "queue_full"
    clock.advance(5)
    assert m.expire() == [queued]  # its wait ended without a slot: admitted, not rejected
    assert queued.state == "granted" and queued.would_refuse == "parallel_limit"
    assert m.in_flight[("j", "a")] == 5  # they all run, beyond the 2 slots


def test_shadow_charges_the_window_beyond_its_limit() -> None:
    m, clock, ledger = shadow_manager(models=MODELS[1:])
    first = [m.submit("j", wait_seconds=0) for _ in range(2)]
    for t in first:
        m.release(t)
    third = m.submit("j", wait_seconds=0)
    assert third.would_refuse is None  # 300 tokens: 3 jobs of 100 fit
    over = m.submit("j", wait_seconds=0)
    assert over.state == "granted" and over.would_refuse == "window_spent"
    assert ledger.snapshot(clock.now())["b"]["tokensPerMinute"]["used"] == 400


def test_switching_to_enforce_refuses_again_and_nothing_stays_stuck() -> None:
    m, _, _ = shadow_manager(models=MODELS[:1])
    tickets = [m.submit("j", wait_seconds=0) for _ in range(4)]
    assert sum(t.would_refuse is not None for t in tickets) == 2
    enforce = make_spec(MODELS[:1], JOBS, mode="enforce")
    m.set_policy(enforce, compute_allocation(enforce, 1))
    with pytest.raises(QueueFull):
        m.submit("j", wait_seconds=0)  # 4 leases hold 2 slots: new work waits or is refused
    for t in tickets:
        m.release(t)
    assert m.in_flight[("j", "a")] == 0 and not m.leases
    assert [m.submit("j", wait_seconds=0).state for _ in range(2)] == ["granted", "granted"]
    with pytest.raises(QueueFull):
        m.submit("j", wait_seconds=0)


def test_a_waiting_job_times_out_as_a_refusal_once_its_model_is_enforced() -> None:
    m, clock, _ = shadow_manager(models=MODELS[:1])
    for _ in range(2):
        m.submit("j", wait_seconds=0)
    waiting = m.submit("j", wait_seconds=1)
    enforce = make_spec(MODELS[:1], JOBS, mode="enforce")
    m.set_policy(enforce, compute_allocation(enforce, 1))
    clock.advance(1)
    m.expire()
    assert waiting.state == "rejected" and waiting.would_refuse is None


def test_only_the_models_in_shadow_admit_anyway() -> None:
    models = [{**MODELS[0], "mode": "shadow"}, {"name": "c", "limits": {"maxConcurrentRequests": 1}}]
    m, _, _ = shadow_manager(mode="enforce", models=models)
    assert m.submit("j", ["c"], wait_seconds=0).state == "granted"
    with pytest.raises(QueueFull):
        m.submit("j", ["c"], wait_seconds=0)  # c is enforced
    for _ in range(2):
        m.submit("j", ["a"], wait_seconds=0)
    # Allowed on both, full on both: admitted on the one in shadow.
    both = m.submit("j", ["c", "a"], wait_seconds=0)
    assert (both.state, both.model, both.would_refuse) == ("granted", "a", "parallel_limit")


def test_counts_by_model_and_what_is_left_to_send() -> None:
    counts = ShadowCounts()
    counts.count("a", "j", "parallel_limit")
    counts.count("a", "k", "parallel_limit")
    counts.count("b", "j", "window_spent")
    assert counts.by_model() == {"a": {"parallel_limit": 2}, "b": {"window_spent": 1}}
    sent = counts.take_unsent()
    assert sent == {"parallel_limit": 2, "window_spent": 1} and counts.take_unsent() == {}
    counts.put_back(sent)  # Redis did not answer: sent with the next ones
    counts.count("a", "j", "queue_full")
    assert counts.take_unsent() == {"parallel_limit": 2, "window_spent": 1, "queue_full": 1}
