"""After a join, every instance keeps free what the fleet still holds above the new shares (the
allocation record's ``excess``), so a joiner never adds its share to leases that already fill the
limit (docs/fleet.md, "Joins")."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from limiter.core.admission import JobTypeManager
from limiter.core.allocation import Held, compute_allocation
from limiter.core.clock import FakeClock
from limiter.core.membership import AllocationRecord, fleet_excess
from tests.unit.conftest import make_spec
from tests.unit.test_allocation import CONC, CONC_JOBS, TPM, TPM_JOBS


def test_an_excess_sets_a_ceiling_on_the_model_not_the_slots() -> None:
    spec = make_spec(CONC, CONC_JOBS)  # maxConcurrentRequests 100, ratios 0.7 / 0.3
    alloc = compute_allocation(spec, 3, excess={"model-gamma": 20})
    assert (alloc.slots_of("A", "model-gamma"), alloc.slots_of("B", "model-gamma")) == (23, 10)
    assert alloc.ceilings == {"model-gamma": 33 - 20}
    assert alloc.to_json()["settling"] == {"model-gamma": {"excess": 20, "ceiling": 13}}
    # Held leases come off first: floor((100 - 10) / 3) - 20
    held = compute_allocation(spec, 3, held={"model-gamma": Held(leases=10)}, excess={"model-gamma": 20})
    assert held.ceilings == {"model-gamma": 10}
    assert compute_allocation(spec, 3, excess={"model-gamma": 90}).ceilings == {"model-gamma": 0}
    assert compute_allocation(spec, 3).ceilings == {} == compute_allocation(spec, 3).to_json()["settling"]
    # Window limits are drawn from the fleet's budgets, never divided by a count: no ceiling.
    assert compute_allocation(make_spec(TPM, TPM_JOBS), 2, excess={"model-alpha": 5}).ceilings == {}
    shadow = make_spec([{**CONC[0], "mode": "shadow"}], CONC_JOBS)
    assert compute_allocation(shadow, 3, excess={"model-gamma": 20}).ceilings == {}


def test_the_manager_holds_every_type_to_the_ceiling_until_the_excess_ends() -> None:
    spec = make_spec(CONC, CONC_JOBS)
    m = JobTypeManager(spec, compute_allocation(spec, 3, excess={"model-gamma": 30}), FakeClock())
    a = [m.submit("A", wait_seconds=10) for _ in range(2)]
    b = [m.submit("B", wait_seconds=10) for _ in range(2)]
    assert [t.state for t in a + b] == ["granted", "granted", "granted", "waiting"]  # ceiling 33 - 30
    refusal = m.refusal(b[1])
    assert refusal.reason == "parallel_limit" and refusal.limit.to_json() == {
        "name": "maxConcurrentRequests", "model": "model-gamma", "value": 3,
    }  # fmt: skip
    m.set_allocation(compute_allocation(spec, 3, excess={"model-gamma": 29}))
    assert b[1].state == "granted"
    late = m.submit("A", wait_seconds=10)
    assert late.state == "waiting"
    m.release(a[0])
    assert late.state == "granted"  # a freed lease goes to waiting work, under the ceiling
    m.set_allocation(compute_allocation(spec, 3))  # settled: the slots alone bind again
    more = [m.submit("A") for _ in range(19)]
    assert all(t.state == "granted" for t in more)


def test_a_record_carries_its_excess() -> None:
    raw = (
        '{"instanceCount":3,"epoch":4,"generation":1,"changedAtMs":1,"reason":"join",'
        '"pools":{},"held":{},"excess":{"m":7}}'
    )
    record = AllocationRecord.from_json(raw)
    assert record.excess == {"m": 7} and record.to_json()["excess"] == {"m": 7}
    older = AllocationRecord.from_json(raw.replace(',"excess":{"m":7}', ""))  # before this field
    assert older.excess == {}


@settings(max_examples=400, deadline=None)
@given(
    limit=st.integers(1, 120),
    old=st.integers(1, 8),
    joiners=st.integers(1, 4),
    ghost=st.integers(0, 20),
    fill=st.lists(st.floats(0, 1), min_size=8, max_size=8),
    drains=st.lists(st.tuples(st.integers(0, 11), st.integers(1, 5)), max_size=30),
)
def test_the_fleet_never_holds_more_than_the_limit_while_a_join_settles(
    limit: int, old: int, joiners: int, ghost: int, fill: list[float], drains: list[tuple[int, int]]
) -> None:
    """``old`` instances hold up to their shares; ``joiners`` join. Then, again and again, every
    instance admits at once up to what the same record allows, and some leases end: at no point
    does the fleet hold more than the limit (less the ghost's leases)."""
    spec = make_spec([{"name": "m", "limits": {"maxConcurrentRequests": limit}}], [{"name": "A", "ratio": 1}])
    ghost = min(ghost, limit)
    held = {"m": Held(leases=ghost)} if ghost else {}
    before = compute_allocation(spec, old, held=held).slots_of("A", "m")
    leases = [int(before * f) for f in fill[:old]] + [0] * joiners
    n = old + joiners

    def admit_all() -> None:
        """Every instance at once, from the same record: each below its cap fills up to it."""
        excess = fleet_excess(spec, n, held, [{"m": x} for x in leases])
        alloc = compute_allocation(spec, n, held=held, excess=excess)
        cap = min(alloc.slots_of("A", "m"), alloc.ceilings.get("m", limit))
        leases[:] = [max(x, cap) for x in leases]
        assert sum(leases) + ghost <= limit, (leases, excess, cap)

    admit_all()
    for who, ended in drains:
        i = who % n
        leases[i] = max(0, leases[i] - ended)
        admit_all()
    settled = fleet_excess(spec, n, held, [{"m": 0}] * n)
    assert settled == {}
