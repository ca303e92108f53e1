"""What the membership scripts exchange with Python: the allocation record and the policy projection.

Pure: no I/O. :class:`limiter.redis.fleetstore.RedisStore` runs the scripts; this module builds their
arguments and reads their replies.

The allocation record is the JSON the scripts store under ``fl:{ns/name}:allocation`` and publish
on the policy's channel, once per change::

    {"instanceCount": 2, "epoch": 7, "generation": 3, "changedAtMs": 1732230000123,
     "since": 1732229000000, "reason": "join",
     "pools": {"model-alpha": {"totalSlots": 10, "tokensPerMinute": 50000}},
     "held": {"model-alpha": {"leases": 4, "tokens": 40000, "requests": 4}},
     "excess": {"model-alpha": 3}}

``pools`` is computed in Lua from the pool parameters of :func:`limiter.core.allocation.pool_params`
with exact integer arithmetic, so ``totalSlots`` equals ``compute_allocation(spec, N)`` exactly.
The per-instance shares (capacity / N) are doubles, for display: instances recompute exact values
from the policy and ``instanceCount``.

``held`` sums the *ghosts*: the last lease report (:class:`LeaseReport`) of every instance that left
the fleet with leases in flight (evicted, replaced by a new process with its id, or shut down before
its leases ended), until the latest deadline it reported or until it re-joins. Instances take it off
each model's capacity before dividing (:func:`limiter.core.allocation.compute_allocation`).

``excess`` is what a shrinking share leaves behind: after a join (or a new ghost) the live instances'
shares of ``maxConcurrentRequests`` shrink at once, but the leases they granted under the larger
share run on. Per model, it is the leases the live instances' last reports hold above the new share
``floor((C - held) / N)``, less the remainder ``(C - held) - N * share`` that no instance owns.
Every instance keeps that many slots of its own share free
(:attr:`limiter.core.allocation.Allocation.ceilings`) until the over-share leases have ended, so
the fleet never holds more than ``C`` at once, even in the seconds after a join. The heartbeat
script publishes the record again (reason ``settle``) whenever an instance's leases above its share
change, so the excess shrinks as they end.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from limiter.core.allocation import Held, pool_params
from limiter.core.policy import PolicySpec

#: Lua's numbers are doubles: integers are exact only below 2**53.
MAX_SAFE_INTEGER = 2**53 - 1


@dataclass(frozen=True, slots=True)
class PoolRecord:
    """One model's pool in the allocation record."""

    total_slots: int
    """``pools[m].totalSlots`` for the record's instance count (exact)."""
    shares: dict[str, float]
    """Per-instance share (capacity / N) of every limit the model sets, by camelCase limit name.
    A double: display only; recompute exact shares from the policy."""


@dataclass(frozen=True, slots=True)
class AllocationRecord:
    """The fleet's allocation as the scripts last computed it."""

    instance_count: int
    """Live instances (N)."""
    epoch: int
    """Increments on every change of membership or policy; orders records (a stale one is older)."""
    generation: int
    """Generation of the policy the pools were computed from (0: no policy projected yet)."""
    changed_at_ms: int
    """Redis time of the change, ms since the epoch."""
    reason: str
    """What changed, e.g. ``join``, ``leave``, ``evict``, ``rejoin``, ``policy`` (joined with ``+``)."""
    pools: dict[str, PoolRecord]
    """Per model, in policy order; empty while no policy is projected or no instance is live."""
    held: dict[str, Held] = field(default_factory=dict)
    """Per model, the leases of vanished instances still counted against it (models with none
    omitted)."""
    excess: dict[str, int] = field(default_factory=dict)
    """Per model, the leases live instances hold above their share of ``maxConcurrentRequests``,
    less the unowned remainder: what every instance keeps free of its own share (models with none
    omitted)."""
    since: int = 0
    """Redis time when this chain of records began (the first record after the policy's keys were
    empty): a record with another ``since`` means Redis lost its data in between (0: not known,
    a record of an older version)."""

    @classmethod
    def from_json(cls, raw: str | bytes) -> AllocationRecord:
        """Parse a record as stored and published by the scripts."""
        data = json.loads(raw)
        return cls(
            instance_count=int(data["instanceCount"]),
            epoch=int(data["epoch"]),
            generation=int(data["generation"]),
            changed_at_ms=int(data["changedAtMs"]),
            reason=str(data["reason"]),
            pools={
                model: PoolRecord(
                    total_slots=int(pool["totalSlots"]),
                    shares={k: float(v) for k, v in pool.items() if k != "totalSlots"},
                )
                for model, pool in data["pools"].items()
            },
            held={
                model: Held(int(h["leases"]), int(h["tokens"]), int(h["requests"]))
                for model, h in (data.get("held") or {}).items()
            },
            excess={model: int(n) for model, n in (data.get("excess") or {}).items()},
            since=int(data.get("since") or 0),
        )

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready data, in the scripts' camelCase shape."""
        return {
            "instanceCount": self.instance_count,
            "epoch": self.epoch,
            "generation": self.generation,
            "changedAtMs": self.changed_at_ms,
            "since": self.since,
            "reason": self.reason,
            "pools": {m: {"totalSlots": p.total_slots, **p.shares} for m, p in self.pools.items()},
            "held": {m: h.to_json() for m, h in self.held.items()},
            "excess": dict(self.excess),
        }


@dataclass(frozen=True, slots=True)
class MembershipReply:
    """What register, heartbeat and deregister return."""

    allocation: AllocationRecord
    """The allocation after the call (the stored one when nothing changed)."""
    redis_time_ms: int
    """Redis's clock during the call, ms since the epoch: the instance's clock offset is
    ``redis_time_ms - local time at the midpoint of the call``."""
    changed: bool
    """register: the instance joined (was not a member). heartbeat: the instance had been evicted
    and was re-registered by this heartbeat. deregister: the instance was a member and left."""


@dataclass(frozen=True, slots=True)
class PolicyProjection:
    """The arguments of the projection script, derived from a validated spec."""

    spec_json: str
    """The spec as camelCase JSON (``model_dump(mode="json", by_alias=True, exclude_none=True)``)."""
    pool_params_json: str
    """JSON list of ``{"model", "pairs": [[p, q], ...], "limits": {...}}`` in policy order, with
    ``"shadow": true`` for a model in shadow mode (its concurrency has no excess to keep free)."""
    instance_timeout_ms: int
    """``spec.instance.instanceTimeoutSeconds`` in ms."""


def project(spec_json: dict[str, Any]) -> PolicyProjection:
    """Validate a spec (camelCase JSON) and build what the projection script stores.

    Raises :class:`pydantic.ValidationError` for an invalid spec and :class:`ValueError` when a pool
    parameter does not fit Lua's exact integer range.
    """
    spec = PolicySpec.model_validate(spec_json)
    params = pool_params(spec)
    models = []
    for model in spec.models:
        pairs = params[model.name]
        for p, q in pairs:
            if p > MAX_SAFE_INTEGER or q > MAX_SAFE_INTEGER:
                raise ValueError(
                    f"spec.models[{model.name}].limits: pool parameter {p}/{q} exceeds 2**53; "
                    "lower the limits or raise the job types' estimates"
                )
        entry: dict[str, Any] = {
            "model": model.name,
            "pairs": [[p, q] for p, q in pairs],
            "limits": model.limits.as_dict(),
        }
        if spec.mode_of(model.name) == "shadow":
            entry["shadow"] = True
        models.append(entry)
    return PolicyProjection(
        spec_json=json.dumps(
            spec.model_dump(mode="json", by_alias=True, exclude_none=True), separators=(",", ":")
        ),
        pool_params_json=json.dumps(models, separators=(",", ":")),
        instance_timeout_ms=timeout_ms(spec),
    )


def timeout_ms(spec: PolicySpec) -> int:
    """The policy's instance timeout in ms, as the membership scripts take it."""
    return max(1, round(spec.instance.instance_timeout_seconds * 1000))


@dataclass(frozen=True, slots=True)
class LeaseReport:
    """What an instance's clients hold, sent with every heartbeat (and on leaving).

    Redis keeps the last one; if the instance then vanishes (evicted, or replaced by a new process
    with its id) it stays as a ghost counted against the fleet until ``until_ms``, or until the
    same process re-joins (it then counts its leases itself again).
    """

    incarnation: str
    """A random id of the process: a new process with the same instance id does not know the old
    one's leases, so its registration turns them into a ghost instead of forgetting them."""
    models: dict[str, Held]
    """Per model with leases in flight: how many, and what they reserved."""
    until_ms: int
    """The latest deadline of those leases (grant + ``leaseTimeoutSeconds``), ms of Redis time."""

    def encode(self) -> str:
        """The report as the scripts store it: compact JSON, or "" when nothing is held."""
        if not self.models:
            return ""
        return json.dumps(
            {
                "incarnation": self.incarnation,
                "untilMs": self.until_ms,
                "models": {m: h.to_json() for m, h in self.models.items()},
            },
            separators=(",", ":"),
        )


def lease_report(incarnation: str, leases: Iterable[tuple[str, int, int, float]]) -> LeaseReport:
    """The report of ``leases``: ``(model, reserved tokens, reserved requests, deadline)`` each, the
    deadline in seconds of Redis time."""
    models: dict[str, Held] = {}
    until = 0.0
    for model, tokens, requests, deadline in leases:
        models[model] = models.get(model, Held()) + Held(1, tokens, requests)
        until = max(until, deadline)
    return LeaseReport(incarnation, models, math.ceil(until * 1000))


def fleet_excess(
    spec: PolicySpec, instances: int, held: Mapping[str, Held], reports: Iterable[Mapping[str, int]]
) -> dict[str, int]:
    """The record's ``excess`` as the scripts compute it (``excess_json`` in _allocation.lua), from
    the live instances' leases per model (``reports``): per enforced model with
    ``maxConcurrentRequests`` C, with ``left = C - held leases`` and ``share = left // N``, the
    leases above ``share`` summed over the instances, less the remainder ``left - N * share``;
    models where that is not positive are omitted."""
    if instances < 1:
        return {}
    leases = list(reports)
    out: dict[str, int] = {}
    for model in spec.models:
        limit = model.limits.as_dict().get("maxConcurrentRequests")
        if limit is None or spec.mode_of(model.name) == "shadow":
            continue
        left = max(0, limit - held.get(model.name, Held()).leases)
        share = left // instances
        over = sum(max(0, r.get(model.name, 0) - share) for r in leases)
        if over - (left - instances * share) > 0:
            out[model.name] = over - (left - instances * share)
    return out


def encode_info(info: dict[str, Any]) -> str:
    """An instance's registration info as compact JSON (refuses what JSON cannot hold)."""
    return json.dumps(info, separators=(",", ":"), allow_nan=False)
