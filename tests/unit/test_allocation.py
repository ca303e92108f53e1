"""The slot formula of SPEC section 3, by its worked examples and by its properties."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limiter.core.allocation import compute_allocation, pool_params
from tests.unit.conftest import make_spec

TPM = [{"name": "model-alpha", "limits": {"tokensPerMinute": 100_000}}]
TPM_JOBS = [
    {"name": "A", "ratio": 0.6, "estimate": {"tokens": 10_000}},
    {"name": "B", "ratio": 0.4, "estimate": {"tokens": 5_000}},
]
RPM = [{"name": "model-beta", "limits": {"requestsPerMinute": 500}}]
RPM_JOBS = [
    {"name": "A", "ratio": 0.6, "estimate": {"requests": 1}},
    {"name": "B", "ratio": 0.4, "estimate": {"requests": 5}},
]
TPD = [{"name": "m", "limits": {"tokensPerDay": 1_000_000}}]
RPD = [{"name": "m", "limits": {"requestsPerDay": 10_000}}]
CONC = [{"name": "model-gamma", "limits": {"maxConcurrentRequests": 100}}]
CONC_JOBS = [{"name": "A", "ratio": 0.7}, {"name": "B", "ratio": 0.3}]
MIXED = [{"name": "model-delta", "limits": {"tokensPerMinute": 100_000, "requestsPerMinute": 50}}]
MIXED_JOBS = [
    {"name": "A", "ratio": 0.5, "estimate": {"tokens": 10_000, "requests": 1}},
    {"name": "B", "ratio": 0.5, "estimate": {"tokens": 10_000, "requests": 1}},
]
MULTI = [
    {"name": "model-tpm", "limits": {"tokensPerMinute": 100_000}},
    {"name": "model-concurrent", "limits": {"maxConcurrentRequests": 50}},
]
MULTI_JOBS = [
    {"name": "A", "ratio": 0.5, "estimate": {"tokens": 10_000}},
    {"name": "B", "ratio": 0.5, "estimate": {"tokens": 10_000}},
]
THREE = [
    {"name": "A", "ratio": 0.5, "estimate": {"tokens": 10_000}},
    {"name": "B", "ratio": 0.3, "estimate": {"tokens": 10_000}},
    {"name": "C", "ratio": 0.2, "estimate": {"tokens": 10_000}},
]
FOUR = [
    {"name": "A", "ratio": 0.7, "estimate": {"tokens": 10_000}},
    {"name": "B", "ratio": 0.1, "estimate": {"tokens": 10_000}},
    {"name": "C", "ratio": 0.1, "estimate": {"tokens": 10_000}},
    {"name": "D", "ratio": 0.1, "estimate": {"tokens": 10_000}},
]
SCALE = [{"name": "scale", "ratio": 1.0, "estimate": {"tokens": 10_000}}]

# (case, models, job types, instances, {job type: {model: slots}})
CASES = [
    ("tpm", TPM, TPM_JOBS, 1, {"A": {"model-alpha": 6}, "B": {"model-alpha": 8}}),
    ("tpm", TPM, TPM_JOBS, 2, {"A": {"model-alpha": 3}, "B": {"model-alpha": 4}}),
    ("tpm", TPM, TPM_JOBS, 3, {"A": {"model-alpha": 2}, "B": {"model-alpha": 2}}),
    ("rpm", RPM, RPM_JOBS, 1, {"A": {"model-beta": 300}, "B": {"model-beta": 40}}),
    ("rpm", RPM, RPM_JOBS, 2, {"A": {"model-beta": 150}, "B": {"model-beta": 20}}),
    ("rpm", RPM, RPM_JOBS, 3, {"A": {"model-beta": 100}, "B": {"model-beta": 13}}),
    ("tpd", TPD, TPM_JOBS, 1, {"A": {"m": 60}, "B": {"m": 80}}),
    ("tpd", TPD, TPM_JOBS, 2, {"A": {"m": 30}, "B": {"m": 40}}),
    ("tpd", TPD, TPM_JOBS, 3, {"A": {"m": 20}, "B": {"m": 26}}),
    ("rpd", RPD, RPM_JOBS, 1, {"A": {"m": 6000}, "B": {"m": 800}}),
    ("rpd", RPD, RPM_JOBS, 2, {"A": {"m": 3000}, "B": {"m": 400}}),
    ("rpd", RPD, RPM_JOBS, 3, {"A": {"m": 2000}, "B": {"m": 266}}),
    ("concurrent", CONC, CONC_JOBS, 1, {"A": {"model-gamma": 70}, "B": {"model-gamma": 30}}),
    ("concurrent", CONC, CONC_JOBS, 2, {"A": {"model-gamma": 35}, "B": {"model-gamma": 15}}),
    ("concurrent", CONC, CONC_JOBS, 3, {"A": {"model-gamma": 23}, "B": {"model-gamma": 10}}),
    ("tpm+rpm", MIXED, MIXED_JOBS, 1, {"A": {"model-delta": 5}, "B": {"model-delta": 5}}),
    ("tpm+rpm", MIXED, MIXED_JOBS, 2, {"A": {"model-delta": 2}, "B": {"model-delta": 2}}),
    ("tpm+rpm", MIXED, MIXED_JOBS, 3, {"A": {"model-delta": 1}, "B": {"model-delta": 1}}),
    ("multi-model", MULTI, MULTI_JOBS, 2, {"A": {"model-tpm": 2, "model-concurrent": 12}}),
    ("ratios", TPM, THREE, 2, {"A": {"model-alpha": 2}, "B": {"model-alpha": 1}, "C": {"model-alpha": 1}}),
    ("ratios", TPM, THREE, 1, {"A": {"model-alpha": 5}, "B": {"model-alpha": 3}, "C": {"model-alpha": 2}}),
    ("uneven", TPM, FOUR, 1, {"A": {"model-alpha": 7}, "B": {"model-alpha": 1}, "D": {"model-alpha": 1}}),
    ("uneven", TPM, FOUR, 2, {"A": {"model-alpha": 3}, "B": {"model-alpha": 0}}),
    ("scale", TPM, SCALE, 1, {"scale": {"model-alpha": 10}}),
    ("scale", TPM, SCALE, 2, {"scale": {"model-alpha": 5}}),
    ("scale", TPM, SCALE, 3, {"scale": {"model-alpha": 3}}),
]


@pytest.mark.parametrize(("case", "models", "jobs", "n", "expected"), CASES, ids=lambda v: str(v)[:12])
def test_worked_examples(case: str, models: list, jobs: list, n: int, expected: dict) -> None:
    alloc = compute_allocation(make_spec(models, jobs), n)
    for job, per_model in expected.items():
        for model, slots in per_model.items():
            assert alloc.slots_of(job, model) == slots, (case, job, model, n)


def test_tpm_rpm_binding_limit_is_named() -> None:
    alloc = compute_allocation(make_spec(MIXED, MIXED_JOBS), 2)
    assert alloc.slots["A"]["model-delta"].binding == "tokensPerMinute"


def test_per_instance_shares_are_capacity_over_n() -> None:
    doc = compute_allocation(make_spec(TPM, TPM_JOBS), 2).to_json()
    assert doc["slotsByJobTypeAndModel"]["A"]["model-alpha"]["tokensPerMinute"] == 50_000
    assert doc["slotsByJobTypeAndModel"]["A"]["model-alpha"]["requestsPerMinute"] is None
    assert doc["allocation"] == {
        "instanceCount": 2,
        "pools": {
            "model-alpha": {
                "totalSlots": 6,  # floor(100000 / avg(10000, 5000) / 2) = floor(6.67)
                "tokensPerMinute": 50_000,
                "requestsPerMinute": None,
                "tokensPerDay": None,
                "requestsPerDay": None,
            }
        },
    }
    rpm = compute_allocation(make_spec(RPM, RPM_JOBS), 2).to_json()
    assert rpm["slotsByJobTypeAndModel"]["A"]["model-beta"]["requestsPerMinute"] == 250
    three = compute_allocation(make_spec(TPM, TPM_JOBS), 3).to_json()
    assert three["allocation"]["pools"]["model-alpha"]["tokensPerMinute"] == 100_000 / 3


def test_concurrency_pool_is_floor_of_share() -> None:
    doc = compute_allocation(make_spec(CONC, CONC_JOBS), 3).to_json()
    assert doc["allocation"]["pools"]["model-gamma"]["totalSlots"] == 33
    assert doc["slotsByJobTypeAndModel"]["A"]["model-gamma"]["maxConcurrentRequests"] == 100 / 3


@pytest.mark.parametrize(
    ("ratios", "expected"),
    [((0.29, 0.71), (29, 71)), ((0.57, 0.43), (57, 43)), ((0.7, 0.3), (70, 30)), ((0.1, 0.9), (10, 90))],
)
def test_floating_point_traps(ratios: tuple[float, float], expected: tuple[int, int]) -> None:
    # In floats, 100 * 0.29 == 28.999999999999996 and 100 * 0.57 == 56.99999999999999.
    assert math.floor(100 * 0.29) == 28  # the trap is real
    jobs = [{"name": "A", "ratio": ratios[0]}, {"name": "B", "ratio": ratios[1]}]
    alloc = compute_allocation(make_spec(CONC, jobs), 1)
    assert (alloc.slots_of("A", "model-gamma"), alloc.slots_of("B", "model-gamma")) == expected
    tpm_jobs = [{**j, "estimate": {"tokens": 1000}} for j in jobs]
    alloc = compute_allocation(make_spec(TPM, tpm_jobs), 1)
    assert (alloc.slots_of("A", "model-alpha"), alloc.slots_of("B", "model-alpha")) == expected


MEMORY_JOBS = [
    {"name": "A", "ratio": 0.5, "estimate": {"tokens": 10_000, "memoryKB": 2048}},
    {"name": "B", "ratio": 0.5, "estimate": {"tokens": 10_000, "memoryKB": 1024}},
]
HIGH_TPM = [{"name": "m", "limits": {"tokensPerMinute": 10_000_000}}]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_memory_bound_is_local_and_never_divided(n: int) -> None:
    spec = make_spec(HIGH_TPM, MEMORY_JOBS, instance={"memoryBudgetMB": 16})
    alloc = compute_allocation(spec, n)
    # 16 MB = 16384 KB; A: floor(16384 * 0.5 / 2048) = 4; B: floor(16384 * 0.5 / 1024) = 8, for any N.
    assert (alloc.slots_of("A", "m"), alloc.slots_of("B", "m")) == (4, 8)
    assert alloc.slots["A"]["m"].binding == "memory"


def test_memory_bound_only_binds_when_smaller() -> None:
    spec = make_spec(
        TPM,
        [{**j, "estimate": {**j["estimate"], "memoryKB": 1}} for j in TPM_JOBS],
        instance={"memoryBudgetMB": 1024},
    )
    assert compute_allocation(spec, 2).slots_of("A", "model-alpha") == 3


def test_no_memory_budget_means_no_memory_bound_in_plan() -> None:
    spec = make_spec(HIGH_TPM, MEMORY_JOBS)
    assert compute_allocation(spec, 1).slots_of("A", "m") == 500
    # A running instance passes its cgroup-derived budget explicitly.
    assert compute_allocation(spec, 1, memory_budget_kb=8192).slots_of("A", "m") == 2


def test_job_type_model_list_limits_its_entries() -> None:
    spec = make_spec(
        MULTI,
        [
            {"name": "A", "ratio": 0.5, "estimate": {"tokens": 10_000}, "models": ["model-concurrent"]},
            {"name": "B", "ratio": 0.5, "estimate": {"tokens": 10_000}},
        ],
    )
    alloc = compute_allocation(spec, 1)
    assert list(alloc.slots["A"]) == ["model-concurrent"]
    assert list(alloc.slots["B"]) == ["model-tpm", "model-concurrent"]
    assert alloc.slots_of("A", "model-tpm") == 0


def test_instances_must_be_positive() -> None:
    with pytest.raises(ValueError, match="instances: 0 is not valid"):
        compute_allocation(make_spec(TPM, TPM_JOBS), 0)


# -- properties ---------------------------------------------------------------------------------

LIMIT_KEYS = [
    "tokensPerMinute",
    "requestsPerMinute",
    "tokensPerDay",
    "requestsPerDay",
    "maxConcurrentRequests",
]


@st.composite
def policies(draw: st.DrawFn) -> dict:
    keys = draw(st.lists(st.sampled_from(LIMIT_KEYS), min_size=1, max_size=5, unique=True))
    limits = {k: draw(st.integers(1, 10_000_000)) for k in keys}
    k = draw(st.integers(1, 5))
    parts = draw(st.lists(st.integers(1, 100), min_size=k, max_size=k))
    total = sum(parts)
    # Ratios as exact decimals summing to 1: the last one takes the remainder.
    ratios = [Fraction(p * 1000 // total, 1000) for p in parts[:-1]]
    if any(r == 0 for r in ratios) or sum(ratios) >= 1:
        ratios = [Fraction(1, 1)] if k == 1 else [Fraction(1, 2 * (k - 1))] * (k - 1)
    ratios.append(1 - sum(ratios))
    jobs = []
    for i, r in enumerate(ratios):
        jobs.append(
            {
                "name": f"j{i}",
                "ratio": float(r),
                "flexible": draw(st.booleans()),
                "estimate": {"tokens": draw(st.integers(1, 50_000)), "requests": draw(st.integers(1, 10))},
            }
        )
    return {"models": [{"name": "m", "limits": limits}], "jobTypes": jobs}


@settings(max_examples=200, deadline=None)
@given(policies(), st.integers(1, 60))
def test_summed_over_instances_slots_never_exceed_the_model(policy: dict, n: int) -> None:
    spec = make_spec(policy["models"], policy["jobTypes"])
    alloc = compute_allocation(spec, n)
    limits = policy["models"][0]["limits"]
    for name, (field, _) in {
        "tokensPerMinute": ("tokens", 0),
        "requestsPerMinute": ("requests", 0),
        "tokensPerDay": ("tokens", 0),
        "requestsPerDay": ("requests", 0),
    }.items():
        if name in limits:
            used = sum(alloc.slots_of(j.name, "m") * getattr(j.estimate, field) for j in spec.job_types)
            assert used * n <= limits[name]
    if "maxConcurrentRequests" in limits:
        assert sum(alloc.slots_of(j.name, "m") for j in spec.job_types) * n <= limits["maxConcurrentRequests"]


@settings(max_examples=200, deadline=None)
@given(policies(), st.integers(1, 60))
def test_more_instances_never_give_more_slots(policy: dict, n: int) -> None:
    spec = make_spec(policy["models"], policy["jobTypes"])
    a, b = compute_allocation(spec, n), compute_allocation(spec, n + 1)
    for j in spec.job_types:
        assert b.slots_of(j.name, "m") <= a.slots_of(j.name, "m")
    assert b.pools["m"].total_slots <= a.pools["m"].total_slots


@settings(max_examples=100, deadline=None)
@given(policies(), st.integers(1, 60))
def test_pool_params_reproduce_pools(policy: dict, n: int) -> None:
    spec = make_spec(policy["models"], policy["jobTypes"])
    pairs = pool_params(spec)["m"]
    assert min(p // (q * n) for p, q in pairs) == compute_allocation(spec, n).pools["m"].total_slots
