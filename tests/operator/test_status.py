"""The status a policy gets for what the operator observed: conditions as a table of situations."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from limiter_operator.builders import parse_policy
from limiter_operator.status import (
    FleetState,
    Observation,
    RedisProblem,
    RedisState,
    build_status,
    models_column,
    status_patch,
)

from limiter.core.membership import AllocationRecord, PoolRecord
from tests.operator.test_builders import SPEC, body

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:01:00Z"
VALID = parse_policy(body(generation=3))
BAD_SPEC = copy.deepcopy(SPEC)
BAD_SPEC["jobTypes"][0]["ratio"] = 0.9
INVALID = parse_policy(body(BAD_SPEC, generation=4))


def record(n: int) -> AllocationRecord:
    return AllocationRecord(
        instance_count=n,
        epoch=9,
        generation=3,
        changed_at_ms=1,
        reason="join",
        pools={
            "model-alpha": PoolRecord(total_slots=10 // max(n, 1), shares={"tokensPerMinute": 100000 / n})
        },
    )


def redis(projected: int | None = 3, n: int = 2) -> RedisState:
    return RedisState("127.0.0.1:6379", projected, record(n) if n else None)


DOWN = RedisProblem("Unreachable", "Redis at 127.0.0.1:6379 is unavailable (load_policy): refused")


def conditions(doc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in doc["conditions"]}


@pytest.mark.parametrize(
    "policy, fleet, state, ready, projected, degraded, unavailable",
    [
        (VALID, FleetState(2, 2), redis(), ("True", "FleetReady"), ("True", "Projected"),
         ("False", "InstancesAgree"), ("False", "Connected")),
        (VALID, FleetState(2, 1), redis(n=1), ("False", "PodsNotReady"), ("True", "Projected"),
         ("False", "InstancesAgree"), ("False", "Connected")),
        (VALID, FleetState(2, 2), redis(n=1), ("False", "InstancesNotJoined"), ("True", "Projected"),
         ("True", "InstancesDisagree"), ("False", "Connected")),
        (VALID, FleetState(2, 2), redis(projected=2), ("False", "Pending"), ("False", "Pending"),
         ("False", "InstancesAgree"), ("False", "Connected")),
        (VALID, FleetState(2, 2), redis(projected=7), ("False", "GenerationConflict"),
         ("False", "GenerationConflict"), ("False", "InstancesAgree"), ("False", "Connected")),
        (VALID, None, redis(n=0), ("False", "Pending"), ("True", "Projected"),
         ("False", "InstancesAgree"), ("False", "Connected")),
        (VALID, FleetState(2, 2), DOWN, ("False", "RedisUnavailable"), ("Unknown", "RedisUnavailable"),
         ("Unknown", "RedisUnavailable"), ("True", "Unreachable")),
        (INVALID, FleetState(2, 2), redis(projected=3), ("False", "InvalidPolicy"),
         ("False", "InvalidPolicy"), ("False", "InstancesAgree"), ("False", "Connected")),
        (VALID, FleetState(0, 0), redis(n=0), ("True", "FleetReady"), ("True", "Projected"),
         ("False", "InstancesAgree"), ("False", "Connected")),
        (VALID, FleetState(1, 3), redis(n=1), ("False", "ScalingDown"), ("True", "Projected"),
         ("True", "InstancesDisagree"), ("False", "Connected")),
    ],
    ids=["ready", "pod-not-ready", "instance-missing", "projecting", "newer-in-redis", "no-deployment",
         "redis-down", "invalid", "scaled-to-zero", "scaling-down"],
)  # fmt: skip
def test_conditions(
    policy: Any, fleet: Any, state: Any, ready: Any, projected: Any, degraded: Any, unavailable: Any
) -> None:
    doc = build_status(Observation(policy, fleet, state), None, NOW)
    assert conditions(doc) == {
        "Ready": ready,
        "Projected": projected,
        "Degraded": degraded,
        "RedisUnavailable": unavailable,
    }
    assert [c["type"] for c in doc["conditions"]] == ["Ready", "Projected", "Degraded", "RedisUnavailable"]
    assert all(c["observedGeneration"] == policy.ref.generation for c in doc["conditions"])


def test_a_ready_fleet_reports_counts_and_pools() -> None:
    doc = build_status(Observation(VALID, FleetState(2, 2), redis()), None, NOW)
    assert {k: v for k, v in doc.items() if k != "conditions"} == {
        "observedGeneration": 3,
        "projectedGeneration": 3,
        "models": "model-alpha",
        "replicas": 2,
        "readyReplicas": 2,
        "instanceCount": 2,
        "pools": [{"name": "model-alpha", "totalSlots": 5, "tokensPerMinute": 50000.0}],
    }


def test_an_invalid_generation_says_what_and_which_generation_runs() -> None:
    doc = build_status(Observation(INVALID, FleetState(2, 2), redis(projected=3)), None, NOW)
    ready = doc["conditions"][0]
    assert ready["message"].startswith(
        "generation 4 is invalid and was not applied (the fleet keeps generation 3)"
    )
    assert "spec.jobTypes[*].ratio: ratios sum to 1.3" in ready["message"]
    assert doc["observedGeneration"] == 4 and doc["projectedGeneration"] == 3


def test_an_outage_drops_what_only_redis_knows() -> None:
    doc = build_status(Observation(VALID, FleetState(2, 0), DOWN), None, NOW)
    assert "instanceCount" not in doc and "pools" not in doc and "projectedGeneration" not in doc
    assert doc["readyReplicas"] == 0
    assert "refused" in doc["conditions"][0]["message"]


def test_transition_times_change_only_with_status() -> None:
    first = build_status(Observation(VALID, FleetState(2, 2), redis()), None, NOW)
    same = build_status(Observation(VALID, FleetState(2, 2), redis()), first, LATER)
    assert same == first
    assert status_patch(first, same) is None
    down = build_status(Observation(VALID, FleetState(2, 0), DOWN), first, LATER)
    times = {c["type"]: c["lastTransitionTime"] for c in down["conditions"]}
    assert times == {"Ready": LATER, "Projected": LATER, "Degraded": LATER, "RedisUnavailable": LATER}
    healed = build_status(Observation(VALID, FleetState(2, 2), redis()), down, "2026-01-01T00:02:00Z")
    assert {c["type"]: c["lastTransitionTime"] for c in healed["conditions"]} == {
        k: "2026-01-01T00:02:00Z" for k in times
    }


def test_status_patch_sends_changes_and_removals_only() -> None:
    before = build_status(Observation(VALID, FleetState(2, 2), redis()), None, NOW)
    after = build_status(Observation(VALID, FleetState(2, 0), DOWN), before, LATER)
    patch = status_patch({**before, "somethingElse": 1}, after)
    assert patch is not None
    assert patch["instanceCount"] is None and patch["pools"] is None and patch["projectedGeneration"] is None
    assert patch["readyReplicas"] == 0
    assert "somethingElse" not in patch and "replicas" not in patch and "models" not in patch


def test_numbers_read_back_as_integers_are_no_change() -> None:
    before = build_status(Observation(VALID, FleetState(2, 2), redis()), None, NOW)
    stored = copy.deepcopy(before)
    stored["pools"][0]["tokensPerMinute"] = 50000  # how the API server returns 50000.0
    assert status_patch(stored, before) is None


@pytest.mark.parametrize(
    "names, expected",
    [
        ((), ""),
        (("a", "b"), "a,b"),
        (
            tuple(f"model-number-{i}" for i in range(6)),
            "model-number-0,model-number-1,model-number-2,+3 more",
        ),
        (("m" * 80,), "+1 more"),
    ],
)
def test_models_column(names: tuple[str, ...], expected: str) -> None:
    assert models_column(names) == expected
    assert len(models_column(names)) <= 60
