"""Slot calculation through GET /api/debug/allocation on real instances, for 1, 2 and 3 of them.

Each pod's answer must equal `compute_allocation(spec, N)`, the same arithmetic as
`fleet-limiter plan`, for every limit type.
"""

from __future__ import annotations

from typing import Any

import pytest

from limiter.core.allocation import compute_allocation
from limiter.core.policy import parse_policy
from tests.support.fleet import Fleet
from tests.support.waiting import wait_until

TWO_TPM = [
    {"name": "A", "ratio": 0.6, "estimate": {"tokens": 10000}},
    {"name": "B", "ratio": 0.4, "estimate": {"tokens": 5000}},
]
TWO_REQ = [
    {"name": "A", "ratio": 0.6, "estimate": {"requests": 1}},
    {"name": "B", "ratio": 0.4, "estimate": {"requests": 5}},
]
CONFIGS: dict[str, dict[str, Any]] = {
    "tpm": {"models": [{"name": "model-alpha", "limits": {"tokensPerMinute": 100000}}], "jobTypes": TWO_TPM},
    "rpm": {"models": [{"name": "model-beta", "limits": {"requestsPerMinute": 500}}], "jobTypes": TWO_REQ},
    "tpd": {"models": [{"name": "model-d", "limits": {"tokensPerDay": 1000000}}], "jobTypes": TWO_TPM},
    "rpd": {"models": [{"name": "model-r", "limits": {"requestsPerDay": 10000}}], "jobTypes": TWO_REQ},
    "concurrent": {
        "models": [{"name": "model-gamma", "limits": {"maxConcurrentRequests": 100}}],
        "jobTypes": [{"name": "A", "ratio": 0.7}, {"name": "B", "ratio": 0.3}],
    },
    "tpm-rpm": {
        "models": [{"name": "model-delta", "limits": {"tokensPerMinute": 100000, "requestsPerMinute": 50}}],
        "jobTypes": [
            {"name": "A", "ratio": 0.5, "estimate": {"tokens": 10000, "requests": 1}},
            {"name": "B", "ratio": 0.5, "estimate": {"tokens": 10000, "requests": 1}},
        ],
    },
    "multi-model": {
        "models": [
            {"name": "model-tpm", "limits": {"tokensPerMinute": 100000}},
            {"name": "model-concurrent", "limits": {"maxConcurrentRequests": 50}},
        ],
        "jobTypes": [
            {"name": "A", "ratio": 0.5, "estimate": {"tokens": 10000}},
            {"name": "B", "ratio": 0.5, "estimate": {"tokens": 10000}},
        ],
    },
    "three-ratios": {
        "models": [{"name": "model-alpha", "limits": {"tokensPerMinute": 100000}}],
        "jobTypes": [
            {"name": n, "ratio": r, "estimate": {"tokens": 10000}}
            for n, r in (("A", 0.5), ("B", 0.3), ("C", 0.2))
        ],
    },
    "four-ratios": {
        "models": [{"name": "model-alpha", "limits": {"tokensPerMinute": 100000}}],
        "jobTypes": [
            {"name": n, "ratio": r, "estimate": {"tokens": 10000}}
            for n, r in (("A", 0.7), ("B", 0.1), ("C", 0.1), ("D", 0.1))
        ],
    },
    "memory": {
        "models": [{"name": "model-m", "limits": {"tokensPerMinute": 10000000}}],
        "jobTypes": [
            {"name": "A", "ratio": 0.5, "estimate": {"tokens": 10000, "memoryKB": 2048}},
            {"name": "B", "ratio": 0.5, "estimate": {"tokens": 10000, "memoryKB": 1024}},
        ],
        "instance": {"memoryBudgetMB": 16},
    },
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.timeout(60)
def test_every_instance_reports_the_planned_slots(fleet: Fleet, config: str) -> None:
    spec_doc = CONFIGS[config]
    spec, _ = parse_policy(spec_doc)
    fleet.write_policy(f"slots-{config}", spec_doc)
    for n in (1, 2, 3):
        fleet.start(1)
        expected = compute_allocation(spec, n).to_json()
        for inst in fleet.live():
            wait_until(
                lambda inst=inst, n=n: inst.allocation()["allocation"]["instanceCount"] == n, timeout=2
            )
            doc = inst.allocation()
            assert doc["allocation"] == expected["allocation"], (config, n)
            assert doc["slotsByJobTypeAndModel"] == expected["slotsByJobTypeAndModel"], (config, n)
            assert set(doc["jobTypes"]) == {j.name for j in spec.job_types}
