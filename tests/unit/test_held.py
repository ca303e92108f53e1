"""The leases of vanished instances are taken off a model's capacity before it is divided: the live
instances' slots and the held leases together never exceed a limit (docs/fleet.md)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from limiter.core.allocation import Held, compute_allocation
from limiter.core.membership import AllocationRecord, lease_report
from tests.unit.conftest import make_spec
from tests.unit.test_allocation import CONC, CONC_JOBS, TPM, TPM_JOBS, policies

FIELDS = {
    "tokensPerMinute": "tokens",
    "requestsPerMinute": "requests",
    "tokensPerDay": "tokens",
    "requestsPerDay": "requests",
}


def test_held_leases_come_off_the_capacity_before_it_is_divided() -> None:
    spec = make_spec(CONC, CONC_JOBS)  # maxConcurrentRequests 100, ratios 0.7 / 0.3
    assert compute_allocation(spec, 2).slots_of("A", "model-gamma") == 35
    alloc = compute_allocation(spec, 2, held={"model-gamma": Held(leases=30)})
    assert (alloc.slots_of("A", "model-gamma"), alloc.slots_of("B", "model-gamma")) == (24, 10)  # 70 / 2
    assert alloc.pools["model-gamma"].total_slots == 50  # the pools stay the nominal division
    assert alloc.to_json()["heldByVanished"] == {"model-gamma": {"leases": 30, "tokens": 0, "requests": 0}}
    tpm = compute_allocation(make_spec(TPM, TPM_JOBS), 1, held={"model-alpha": Held(2, 20_000, 2)})
    assert tpm.slots_of("A", "model-alpha") == 4  # floor(80000 / 10000 * 0.6)
    # More held than the limit (a policy lowered it meanwhile) gives no slot, not a negative one.
    over = compute_allocation(spec, 1, held={"model-gamma": Held(leases=500)})
    assert over.slots_of("A", "model-gamma") == 0
    # Models the policy does not have are ignored.
    assert compute_allocation(spec, 1, held={"gone": Held(leases=5)}).held == {}


@settings(max_examples=200, deadline=None)
@given(policies(), st.integers(1, 30), st.integers(0, 50), st.integers(0, 10**6), st.integers(0, 500))
def test_live_slots_and_held_leases_never_exceed_the_model(
    policy: dict, n: int, leases: int, tokens: int, requests: int
) -> None:
    spec = make_spec(policy["models"], policy["jobTypes"])
    held = Held(leases, tokens, requests)
    alloc = compute_allocation(spec, n, held={"m": held})
    limits = policy["models"][0]["limits"]
    for name, field in FIELDS.items():
        if name in limits and getattr(held, field) <= limits[name]:
            used = sum(alloc.slots_of(j.name, "m") * getattr(j.estimate, field) for j in spec.job_types)
            assert used * n + getattr(held, field) <= limits[name]
    if "maxConcurrentRequests" in limits and leases <= limits["maxConcurrentRequests"]:
        slots = sum(alloc.slots_of(j.name, "m") for j in spec.job_types)
        assert slots * n + leases <= limits["maxConcurrentRequests"]
    # Holding more never gives anyone more.
    free = compute_allocation(spec, n)
    assert all(alloc.slots_of(j.name, "m") <= free.slots_of(j.name, "m") for j in spec.job_types)


def test_a_report_sums_leases_per_model_with_the_latest_deadline() -> None:
    report = lease_report("i1", [("m", 10, 1, 100.0), ("m", 5, 2, 160.5), ("n", 0, 1, 120.0)])
    assert report.models == {"m": Held(2, 15, 3), "n": Held(1, 0, 1)}
    assert report.until_ms == 160_500
    assert '"incarnation":"i1"' in report.encode()


def test_records_without_held_parse_as_holding_nothing() -> None:
    old = '{"instanceCount":1,"epoch":1,"generation":1,"changedAtMs":5,"reason":"join","pools":{}}'
    assert AllocationRecord.from_json(old).held == {}
    new = old[:-1] + ',"held":{"m":{"leases":2,"tokens":3,"requests":4}}}'
    record = AllocationRecord.from_json(new)
    assert record.held == {"m": Held(2, 3, 4)}
    assert record.to_json()["held"] == {"m": {"leases": 2, "tokens": 3, "requests": 4}}
