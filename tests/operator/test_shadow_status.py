"""status.shadow from what the operator observed: the modes of the current generation and the
fleet's would-refuse totals in Redis (pure; the local-cluster test is in test_shadow_cluster.py)."""

from __future__ import annotations

import copy
from typing import Any

from limiter_operator.builders import parse_policy
from limiter_operator.status import FleetState, Observation, RedisState, build_status, status_patch

from limiter.k8s.status import PolicyStatus
from tests.operator.test_builders import SPEC, body
from tests.operator.test_status import NOW, record


def status(spec: dict[str, Any], counts: dict[str, int] | None) -> dict[str, Any]:
    policy = parse_policy(body(spec, generation=3))
    state = RedisState("127.0.0.1:6379", 3, record(1), counts)
    doc = build_status(Observation(policy, FleetState(1, 1), state), None, NOW)
    PolicyStatus.model_validate(doc)  # the CRD's status schema takes it
    return doc


def test_an_enforced_policy_without_counts_has_no_shadow_status() -> None:
    assert "shadow" not in status(SPEC, None)
    assert "shadow" not in status(SPEC, {"parallel_limit": 0})


def test_a_policy_in_shadow_lists_its_models_and_the_fleets_totals_by_reason() -> None:
    spec = {**SPEC, "mode": "shadow"}
    names = [m["name"] for m in SPEC["models"]]
    assert status(spec, {})["shadow"] == {"mode": "shadow", "shadowModels": names}
    doc = status(spec, {"window_spent": 4, "parallel_limit": 7})
    assert doc["shadow"]["wouldRefuse"] == [
        {"reason": "parallel_limit", "count": 7},
        {"reason": "window_spent", "count": 4},
    ]


def test_one_model_in_shadow_and_totals_kept_after_switching_back() -> None:
    spec = copy.deepcopy(SPEC)
    spec["models"][0]["mode"] = "shadow"
    assert status(spec, None)["shadow"] == {"mode": "enforce", "shadowModels": [SPEC["models"][0]["name"]]}
    # Back to enforce: what shadow counted stays visible.
    assert status(SPEC, {"queue_full": 2})["shadow"] == {
        "mode": "enforce",
        "wouldRefuse": [{"reason": "queue_full", "count": 2}],
    }


def test_the_patch_removes_what_status_shadow_no_longer_has() -> None:
    before = status({**SPEC, "mode": "shadow"}, {"queue_full": 2})
    after = status(SPEC, {"queue_full": 2})
    patch = status_patch(before, after)
    assert patch is not None
    assert patch["shadow"] == {
        "mode": "enforce",
        "shadowModels": None,
        "wouldRefuse": after["shadow"]["wouldRefuse"],
    }
    gone = status_patch(status({**SPEC, "mode": "shadow"}, None), status(SPEC, None))
    assert gone is not None and gone["shadow"] is None
