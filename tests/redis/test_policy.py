"""Projecting a policy into Redis: generations only move forward; deleting removes every key."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pydantic
import pytest

from limiter.core.policy import PolicySpec
from limiter.core.windows import BudgetAsk
from limiter.redis.fleetstore import RedisStore
from tests.redis.conftest import SPEC

pytestmark = pytest.mark.redis


def with_tpm(tpm: int) -> dict[str, Any]:
    spec = copy.deepcopy(SPEC)
    spec["models"][0]["limits"]["tokensPerMinute"] = tpm
    return spec


async def test_project_and_load(store: RedisStore) -> None:
    assert await store.load_policy() is None
    assert await store.project_policy(SPEC, 1)
    loaded = await store.load_policy()
    assert loaded is not None
    spec_json, generation = loaded
    assert generation == 1
    # Stored as the model dumps it: camelCase, defaults filled in, round-trips through validation.
    expected = PolicySpec.model_validate(SPEC).model_dump(mode="json", by_alias=True, exclude_none=True)
    assert spec_json == expected
    assert spec_json["jobTypes"][0]["estimate"] == {"tokens": 10000, "requests": 1, "memoryKB": 0}
    assert PolicySpec.model_validate(spec_json) == PolicySpec.model_validate(SPEC)


async def test_generations_only_move_forward(store: RedisStore) -> None:
    await store.register("a", {})
    assert await store.project_policy(with_tpm(100000), 2)
    epoch = (await store.heartbeat("a")).allocation.epoch
    assert not await store.project_policy(with_tpm(1000), 1)  # older: an operator replaying history
    assert not await store.project_policy(with_tpm(1000), 2)  # same generation: already applied
    loaded = await store.load_policy()
    assert loaded is not None and loaded[1] == 2
    record = (await store.heartbeat("a")).allocation
    assert record.epoch == epoch and record.generation == 2
    assert record.pools["model-alpha"].total_slots == 13

    assert await store.project_policy(with_tpm(200000), 3)
    record = (await store.heartbeat("a")).allocation
    assert (record.generation, record.epoch, record.reason) == (3, epoch + 1, "policy")
    assert record.pools["model-alpha"].total_slots == 26  # recomputed at once for the live fleet


async def test_invalid_spec_is_never_projected(store: RedisStore) -> None:
    bad = copy.deepcopy(SPEC)
    bad["jobTypes"][0]["ratio"] = 0.7  # ratios sum to 1.1
    with pytest.raises(pydantic.ValidationError, match="sum to exactly 1"):
        await store.project_policy(bad, 1)
    with pytest.raises(ValueError, match="generation"):
        await store.project_policy(SPEC, 0)
    assert await store.load_policy() is None
    assert await store.client.keys("*") == []


async def test_projection_uses_the_new_instance_timeout(store: RedisStore) -> None:
    store.instance_timeout_seconds = 60
    await store.register("silent", {})
    spec = copy.deepcopy(SPEC)
    spec["instance"] = {"heartbeatSeconds": 0.05, "instanceTimeoutSeconds": 0.1}
    await asyncio.sleep(0.15)
    assert await store.project_policy(spec, 1)
    record = await store.allocation()
    assert record is not None
    assert (record.instance_count, record.reason) == (0, "policy+evict")
    assert record.pools == {}  # no instance: no per-instance pools


async def test_delete_policy_removes_every_key(store: RedisStore) -> None:
    other = RedisStore(store.client, "team-b", "chat")  # same model names, another policy
    for s in (store, other):
        await s.project_policy(SPEC, 1)
        await s.register("pod-0", {"host": "h"})
        for dim, limit in (("tokensPerMinute", 100000), ("tokensPerDay", 10**6)):
            await s.draw("model-alpha", [BudgetAsk(dim, limit, 10, 100)])
        await s.charge("model-beta", [("requestsPerMinute", 3), ("requestsPerDay", 3)])
        async with s.subscribe():
            pass
    ours = sorted(k.decode() for k in await store.client.keys("*{team-a/chat}*"))
    assert len(ours) == 5 + 4  # the fixed keys and four budget keys
    theirs = sorted(k.decode() for k in await store.client.keys("*{team-b/chat}*"))

    assert await store.delete_policy() == len(ours)
    remaining = sorted(k.decode() for k in await store.client.keys("*"))
    assert remaining == theirs  # everything of team-a/chat is gone, team-b/chat untouched
    assert await store.load_policy() is None
    assert await store.allocation() is None
    assert await store.delete_policy() == 0  # idempotent (a finalizer may run twice)
