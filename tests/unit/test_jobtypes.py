"""The job-type manager (SPEC section 5) on a fake clock: scenarios and properties."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limiter.core.admission import AdmissionError, JobTypeManager, QueueFull, Ticket, UnknownJobType
from limiter.core.allocation import compute_allocation
from limiter.core.budgets import BudgetLedger
from limiter.core.clock import FakeClock
from tests.unit.conftest import make_spec

MODEL = [{"name": "test-model", "limits": {"maxConcurrentRequests": 10}}]


def manager(
    jobs: list[dict[str, Any]],
    n: int = 1,
    models: list[dict[str, Any]] | None = None,
    gate: bool = False,
    **extra: Any,
) -> tuple[JobTypeManager, FakeClock]:
    spec = make_spec(models or MODEL, jobs, **extra)
    clock = FakeClock()
    ledger = BudgetLedger(spec) if gate else None
    return JobTypeManager(spec, compute_allocation(spec, n), clock, gate=ledger), clock


def granted(tickets: list[Ticket]) -> list[Ticket]:
    return [t for t in tickets if t.state == "granted"]


FIXED_ISOLATION = [
    {"name": "fixed", "ratio": 0.4, "flexible": False},
    {"name": "flexA", "ratio": 0.3},
    {"name": "flexB", "ratio": 0.3},
]


def test_fixed_type_keeps_its_slots_while_flexible_types_are_overloaded() -> None:
    m, _ = manager(FIXED_ISOLATION)  # 10 slots: fixed 4, flexA 3, flexB 3
    flex = [m.submit(t) for t in ["flexA", "flexB"] * 10]
    assert len(granted(flex)) == 6  # flexible types fill exactly their own 6
    fixed = [m.submit("fixed") for _ in range(4)]
    assert len(granted(fixed)) == 4  # the fixed type's 4 slots were never lent
    assert m.snapshot()["fixed"]["allocatedSlots"] == 4
    extra = m.submit("fixed")
    assert extra.state == "waiting"  # and it never borrows
    # Flexible types borrow from each other only: free flexA slots go to flexB's queue.
    for t in granted(flex)[:3]:
        m.release(t)
    assert m.snapshot()["fixed"]["inFlight"] == 4
    assert extra.state == "waiting"


def test_flexible_types_borrow_from_each_other_but_not_from_fixed() -> None:
    m, _ = manager(FIXED_ISOLATION)
    a = [m.submit("flexA") for _ in range(8)]
    # flexA has 3 own + borrows flexB's 3 idle slots; the fixed type's 4 stay free.
    assert len(granted(a)) == 6
    assert sum(t.borrowed for t in a) == 3
    snap = m.snapshot()
    assert snap["flexA"]["allocatedSlots"] == 6 and snap["flexB"]["allocatedSlots"] == 0
    assert snap["flexA"]["currentRatio"] == 0.6 and snap["flexA"]["initialRatio"] == 0.3
    assert snap["fixed"]["currentRatio"] == 0.4
    assert len(granted([m.submit("fixed") for _ in range(4)])) == 4


def test_heavy_flexible_type_completes_six_jobs_while_two_idle_types_lend() -> None:
    jobs = [
        {"name": "heavy", "ratio": 0.34},
        {"name": "idle1", "ratio": 0.33},
        {"name": "idle2", "ratio": 0.33},
    ]
    m, _ = manager(jobs, models=[{"name": "test-model", "limits": {"maxConcurrentRequests": 6}}])
    # 6 slots: heavy floor(6*0.34) = 2, idle types 1 each (2 slots stay unallocated by the floors).
    tickets = [m.submit("heavy") for _ in range(6)]
    assert len(granted(tickets)) == 4  # its 2 + the 2 lent by the idle types
    done = 0
    while any(t.state in ("granted", "waiting") for t in tickets):
        for t in granted(tickets):
            m.release(t)
            done += 1
    assert done == 6


def test_freed_slot_goes_to_its_owner_first() -> None:
    m, _ = manager(
        [{"name": "A", "ratio": 0.5}, {"name": "B", "ratio": 0.5}],
        models=[{"name": "test-model", "limits": {"maxConcurrentRequests": 4}}],
    )
    a = [m.submit("A") for _ in range(4)]  # A: 2 own + 2 borrowed from idle B
    assert len(granted(a)) == 4
    b = [m.submit("B") for _ in range(2)]  # B's slots are lent out: B waits, nothing is preempted
    assert [t.state for t in b] == ["waiting", "waiting"]
    a_more = m.submit("A")
    m.release(a[0])  # the freed slot goes to B (owner, below its share), not to A's waiting job
    assert b[0].state == "granted" and not b[0].borrowed
    assert a_more.state == "waiting"
    m.release(a[1])
    assert b[1].state == "granted"
    m.release(a[2])  # now B is at its share: A's own slot serves A's waiting job
    assert a_more.state == "granted"


def test_sequential_batches_reuse_freed_slots() -> None:
    m, _ = manager(
        [
            {"name": "A", "ratio": 0.6, "estimate": {"tokens": 10_000}},
            {"name": "B", "ratio": 0.4, "estimate": {"tokens": 5_000}},
        ],
        n=2,
        models=[{"name": "test-model", "limits": {"tokensPerMinute": 100_000}}],
    )
    # 3 A slots per instance; a batch of 3 runs at once, then the next batch reuses the slots.
    for _ in range(2):
        batch = [m.submit("A", wait_seconds=1) for _ in range(3)]
        assert len(granted(batch)) == 3
        for t in batch:
            m.release(t)
    assert m.stats["granted"] == 6


def test_long_and_short_jobs_interleave_without_starvation() -> None:
    m, clock = manager(
        [{"name": "A", "ratio": 1.0}], models=[{"name": "test-model", "limits": {"maxConcurrentRequests": 3}}]
    )
    long = [m.submit("A") for _ in range(3)]
    short = [m.submit("A") for _ in range(6)]
    assert all(t.state == "waiting" for t in short)
    # FIFO: as long jobs end one at a time, short jobs start in arrival order.
    m.release(long[0])
    assert [t.state for t in short[:2]] == ["granted", "waiting"]
    m.release(short[0])
    m.release(long[1])
    m.release(long[2])
    assert [t.state for t in short] == ["released"] + ["granted"] * 3 + ["waiting"] * 2
    for t in short[1:4]:
        clock.advance(1)
        m.release(t)
    assert all(t.state in ("granted", "released") for t in short)


def test_job_takes_first_model_in_preference_order_with_a_free_slot() -> None:
    models = [
        {"name": "a", "limits": {"maxConcurrentRequests": 1}},
        {"name": "b", "limits": {"maxConcurrentRequests": 1}},
    ]
    m, _ = manager([{"name": "J", "ratio": 1.0, "models": ["b", "a"]}], models=models)
    first, second, third = (m.submit("J") for _ in range(3))
    assert (first.model, second.model, third.state) == ("b", "a", "waiting")
    override = m.submit("J", models=["a"])
    m.release(first)  # b frees: the oldest waiting job takes it; the a-only job keeps waiting
    assert third.model == "b" and override.state == "waiting"


def test_allocation_change_applies_up_and_down_at_once() -> None:
    spec = make_spec(
        [{"name": "m", "limits": {"tokensPerMinute": 100_000}}],
        [{"name": "scale", "ratio": 1.0, "estimate": {"tokens": 10_000}}],
    )
    m = JobTypeManager(spec, compute_allocation(spec, 2), FakeClock())
    tickets = [m.submit("scale") for _ in range(8)]
    assert len(granted(tickets)) == 5
    m.set_allocation(compute_allocation(spec, 1))  # a pod left: waiting work gets the growth now
    assert len(granted(tickets)) == 8
    m.set_allocation(compute_allocation(spec, 3))  # shrink below in-flight: nothing is cancelled
    assert len(granted(tickets)) == 8
    late = m.submit("scale")
    for t in granted(tickets)[:5]:
        m.release(t)
    assert late.state == "waiting"  # 3 still in flight == 3 slots
    m.release(granted(tickets)[0])
    assert late.state == "granted"


def test_queue_limits_and_wait_deadlines() -> None:
    m, clock = manager(
        [{"name": "A", "ratio": 1.0, "queue": {"maxWaiting": 2, "maxWaitSeconds": 5}}],
        models=[{"name": "test-model", "limits": {"maxConcurrentRequests": 1}}],
    )
    m.submit("A")
    waiting = [m.submit("A", wait_seconds=30), m.submit("A", wait_seconds=1)]
    with pytest.raises(QueueFull, match=r"all models rejected: the queue of job type 'A' is full \(2"):
        m.submit("A")
    assert waiting[0].deadline - waiting[0].enqueued_at == 5  # capped by maxWaitSeconds
    clock.advance(1)
    assert m.expire() == [waiting[1]] and waiting[1].state == "rejected"
    clock.advance(4)
    assert waiting[0] in m.expire()
    with pytest.raises(QueueFull):
        m.submit("A", wait_seconds=0)


def test_cancelled_waiter_leaves_the_queue() -> None:
    m, _ = manager(
        [{"name": "A", "ratio": 1.0}], models=[{"name": "x", "limits": {"maxConcurrentRequests": 1}}]
    )
    holder, gone, next_ = m.submit("A"), m.submit("A"), m.submit("A")
    m.cancel(gone)
    m.release(holder)
    assert gone.state == "cancelled" and next_.state == "granted"


def test_leases_expire_and_return_their_slot() -> None:
    m, clock = manager(
        [{"name": "A", "ratio": 1.0}],
        models=[{"name": "x", "limits": {"maxConcurrentRequests": 1}}],
        instance={"leaseTimeoutSeconds": 30},
    )
    lease, waiter = m.submit("A"), m.submit("A", wait_seconds=60)
    clock.advance(30)
    m.expire()
    assert lease.state == "expired" and waiter.state == "granted"


def test_idle_current_ratio_equals_initial_ratio() -> None:
    from limiter.core.policy import load_policy

    spec, _ = load_policy(Path(__file__).parents[2] / "examples" / "production.yaml")
    m = JobTypeManager(spec, compute_allocation(spec, 3), FakeClock())
    for job, row in m.snapshot().items():
        assert row["currentRatio"] == row["initialRatio"] == spec.job_type(job).ratio


def test_bad_requests_are_named() -> None:
    m, _ = manager(
        FIXED_ISOLATION,
        models=[
            {"name": "test-model", "limits": {"maxConcurrentRequests": 10}},
            {"name": "other", "limits": {"maxConcurrentRequests": 1}},
        ],
    )
    with pytest.raises(UnknownJobType, match="unknown job type 'nope'; known job types: fixed, flexA, flexB"):
        m.submit("nope")
    with pytest.raises(AdmissionError, match="may not use model 'gpt'"):
        m.submit("fixed", models=["gpt"])
    with pytest.raises(AdmissionError, match=r"estimate\.cost: unknown field"):
        m.submit("fixed", estimate={"cost": 1})


def test_window_budget_blocks_then_next_window_admits() -> None:
    models = [{"name": "m", "limits": {"tokensPerMinute": 30_000, "maxConcurrentRequests": 100}}]
    m, clock = manager(
        [{"name": "A", "ratio": 1.0, "estimate": {"tokens": 10_000}}], models=models, gate=True
    )
    clock.advance(60 - clock.now() % 60)  # start of a UTC minute
    tickets = [m.submit("A", wait_seconds=120) for _ in range(4)]
    assert len(granted(tickets)) == 3 and tickets[3].state == "waiting"
    m.release(tickets[0])  # the slot frees but the minute's budget is spent: it still waits
    assert tickets[3].state == "waiting"
    clock.advance(60)
    m.dispatch()
    assert tickets[3].state == "granted"


def test_memory_in_flight_never_exceeds_the_budget() -> None:
    models = [
        {"name": "a", "limits": {"maxConcurrentRequests": 100}},
        {"name": "b", "limits": {"maxConcurrentRequests": 100}},
    ]
    m, _ = manager(
        [{"name": "A", "ratio": 1.0, "estimate": {"memoryKB": 1024}}],
        models=models,
        instance={"memoryBudgetMB": 4},
    )
    tickets = [m.submit("A", wait_seconds=10) for _ in range(6)]
    # 4 slots per model by the formula, but 4 MB in flight at most across both models.
    assert len(granted(tickets)) == 4 and m.memory_in_use_kb == 4096


# -- properties ------------------------------------------------------------------------------------

JOBS3 = [
    {"name": "fixed", "ratio": 0.4, "flexible": False},
    {"name": "f1", "ratio": 0.3},
    {"name": "f2", "ratio": 0.3},
]
ops = st.lists(
    st.tuples(
        st.sampled_from(["submit", "release", "resize"]),
        st.sampled_from(["fixed", "f1", "f2"]),
        st.integers(1, 4),
    ),
    max_size=120,
)


def check_invariants(m: JobTypeManager) -> None:
    slots = {j: m.slots.get((j, "m"), 0) for j in ("fixed", "f1", "f2")}
    busy = {j: m.in_flight[(j, "m")] for j in ("fixed", "f1", "f2")}
    # A fixed type never exceeds its slots, and waits only when they are all busy.
    assert busy["fixed"] <= slots["fixed"]
    assert not m.waiting("fixed") or busy["fixed"] == slots["fixed"]
    assert all(not t.borrowed for t in m.leases.values() if t.job_type == "fixed")
    # Borrowing never lets flexible in-flight exceed the flexible pool.
    assert busy["f1"] + busy["f2"] <= slots["f1"] + slots["f2"]
    # Effective shares move between flexible types only, and still add up to the whole.
    snap = m.snapshot()
    assert snap["fixed"]["currentRatio"] == 0.4
    assert abs(sum(float(r["currentRatio"]) for r in snap.values()) - 1) < 1e-5  # type: ignore[arg-type]
    # Owners first: a flexible owner below its share waits only while its slot is lent out.
    for j in ("f1", "f2"):
        if m.waiting(j) and busy[j] < slots[j]:
            assert busy["f1"] + busy["f2"] == slots["f1"] + slots["f2"]


def groups(m: JobTypeManager) -> dict[str, tuple[int, int]]:
    """Leases in flight and slots: of the fixed type, and of the flexible pool (f1 and f2)."""
    flex = ("f1", "f2")
    return {
        "fixed": (m.in_flight[("fixed", "m")], m.slots.get(("fixed", "m"), 0)),
        "flexible": (sum(m.in_flight[(j, "m")] for j in flex), sum(m.slots.get((j, "m"), 0) for j in flex)),
    }


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(4, 30))
def test_borrowing_invariants(operations: list[tuple[str, str, int]], capacity: int) -> None:
    spec = make_spec([{"name": "m", "limits": {"maxConcurrentRequests": capacity}}], JOBS3)
    m = JobTypeManager(spec, compute_allocation(spec, 1), FakeClock())
    live: list[Ticket] = []
    resized = False
    drained: set[str] = set()  # the groups back within their slots since the last resize
    for op, job, k in operations:
        if op == "submit":
            with contextlib.suppress(QueueFull):
                live.append(m.submit(job, wait_seconds=60))
        elif op == "release" and live:
            t = live.pop(k % len(live))
            m.release(t) if t.state == "granted" else m.cancel(t)
        elif op == "resize":
            before = {t.id for t in live if t.state == "granted"}
            resized, drained = True, set()
            m.set_allocation(compute_allocation(spec, k))
            assert before <= {t.id for t in live if t.state == "granted"}  # shrinking cancels nothing
        if not resized:  # after a shrink, in-flight may exceed the new slots until work ends
            check_invariants(m)
        # Once a group (the fixed type; the flexible pool) has drained to its new slots, it never
        # goes above them again: new work waits until the group is under its new share.
        for group, (busy, slots) in groups(m).items():
            if group in drained:
                assert busy <= slots, f"{group}: {busy} in flight after draining to {slots}"
            elif busy <= slots:
                drained.add(group)
    # Every lent slot returns to its owner once borrowed work ends.
    for t in live:
        m.release(t) if t.state == "granted" else m.cancel(t)
    assert sum(m.in_flight.values()) == 0 and not m.waiting()
    assert m.effective_slots() == {j: m.slots.get((j, "m"), 0) for j in ("fixed", "f1", "f2")}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["f1", "f2", "fixed"]), max_size=60), st.integers(4, 30))
def test_without_releases_in_flight_never_exceeds_the_pool(jobs: list[str], capacity: int) -> None:
    spec = make_spec([{"name": "m", "limits": {"maxConcurrentRequests": capacity}}], JOBS3)
    m = JobTypeManager(spec, compute_allocation(spec, 1), FakeClock())
    for j in jobs:
        m.submit(j, wait_seconds=60)
        slots = {k: m.slots[(k, "m")] for k in ("fixed", "f1", "f2")}
        assert m.in_flight[("fixed", "m")] <= slots["fixed"]
        assert m.in_flight[("f1", "m")] + m.in_flight[("f2", "m")] <= slots["f1"] + slots["f2"]
        assert sum(m.in_flight.values()) <= capacity
