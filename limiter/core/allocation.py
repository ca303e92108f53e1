"""Slot allocation (SPEC section 3): pure, exact, no I/O.

For job type j on model m, with N live instances::

    slots[j][m] = min over the limits d that m sets of floor(capacity_d / estimate_{j,d} / N * ratio_j)
                  with maxConcurrentRequests:    floor(maxConcurrentRequests / N * ratio_j)
                  and the local memory bound:    floor(memoryBudgetKB * ratio_j / estimate_{j,memoryKB})

Every floor is taken over :class:`fractions.Fraction`, never a float: ``floor(100 * 0.29)`` is 29.

Leases still held by the clients of vanished instances (:class:`Held`, docs/fleet.md) are taken off
the model's capacity before it is divided: ``capacity_d`` above becomes ``capacity_d - held_d``
(the leases for ``maxConcurrentRequests``, their reserved tokens or requests for the window
limits), so the live instances' slots and the held leases together never exceed a limit. The
pools stay the nominal division Redis keeps.

When shares shrink (a join, a new ghost) the leases granted under the larger share run on: the
allocation record's ``excess`` (docs/fleet.md, "Joins") says how many leases the fleet holds above
the new shares. Until it is 0, the instance holds at most ``share - excess`` leases on the model
(:attr:`Allocation.ceilings`, on top of the job types' slots), so a joiner never adds its share to
leases that already fill the limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from limiter.core.policy import WINDOW_LIMITS, JobType, ModelSpec, PolicySpec

#: Per-instance share fields reported for every model, in display order.
SHARE_FIELDS: tuple[str, ...] = (*WINDOW_LIMITS, "maxConcurrentRequests")
MEMORY = "memory"


@dataclass(frozen=True, slots=True)
class Held:
    """Leases on one model still held by the clients of instances that left the fleet (evicted,
    or shut down with leases in flight), until they are released or time out."""

    leases: int = 0
    tokens: int = 0
    """The tokens those leases reserved."""
    requests: int = 0
    """The requests those leases reserved."""

    def of(self, limit: str) -> int:
        """What the held leases take off ``limit``'s capacity."""
        if limit == "maxConcurrentRequests":
            return self.leases
        return self.tokens if WINDOW_LIMITS[limit][0] == "tokens" else self.requests

    def __add__(self, other: Held) -> Held:
        return Held(self.leases + other.leases, self.tokens + other.tokens, self.requests + other.requests)

    def to_json(self) -> dict[str, int]:
        return {"leases": self.leases, "tokens": self.tokens, "requests": self.requests}


NOTHING_HELD = Held()


@dataclass(frozen=True, slots=True)
class SlotShare:
    """One job type's slots on one model, on one instance."""

    slots: int
    binding: str
    """The limit that gives the fewest slots (a limit name, or ``memory``)."""
    shares: dict[str, Fraction | None]
    """The model's per-instance shares (capacity / N), ``None`` where the model sets no such limit."""


@dataclass(frozen=True, slots=True)
class Pool:
    """A model's job-type-blind pool on one instance, as Redis keeps it."""

    total_slots: int
    shares: dict[str, Fraction | None]


@dataclass(frozen=True, slots=True)
class Allocation:
    """What one instance may run when ``instance_count`` instances share the fleet's limits."""

    instance_count: int
    pools: dict[str, Pool]
    slots: dict[str, dict[str, SlotShare]]
    """job type -> model -> share; only the models the job type may use."""
    memory_budget_kb: int | None = None
    held: dict[str, Held] = field(default_factory=dict)
    """Per model, the leases of vanished instances taken off its capacity (models with none omitted)."""
    excess: dict[str, int] = field(default_factory=dict)
    """Per model, the fleet's leases above the shares (the allocation record's ``excess``)."""
    ceilings: dict[str, int] = field(default_factory=dict)
    """Per model with an excess: the most leases this instance may hold on it, all job types
    together, until the excess is 0 (``floor((C - held) / N) - excess``, at least 0)."""

    def slots_of(self, job_type: str, model: str) -> int:
        """Slots of ``job_type`` on ``model`` (0 where it may not use it)."""
        share = self.slots.get(job_type, {}).get(model)
        return share.slots if share else 0

    def to_json(self) -> dict[str, Any]:
        """The ``allocation``, ``slotsByJobTypeAndModel``, ``heldByVanished`` and ``settling`` parts
        of ``GET /api/debug/allocation``."""
        return {
            "allocation": {
                "instanceCount": self.instance_count,
                "pools": {
                    m: {"totalSlots": p.total_slots, **_shares_json(p.shares, SHARE_FIELDS[:4])}
                    for m, p in self.pools.items()
                },
            },
            "slotsByJobTypeAndModel": {
                j: {
                    m: {"slots": s.slots, **_shares_json(s.shares, SHARE_FIELDS)}
                    for m, s in per_model.items()
                }
                for j, per_model in self.slots.items()
            },
            "heldByVanished": {m: h.to_json() for m, h in self.held.items()},
            "settling": {m: {"excess": self.excess[m], "ceiling": c} for m, c in self.ceilings.items()},
        }


def json_number(value: Fraction | int | None) -> int | float | None:
    """An exact value as JSON: an int where it is whole, else the nearest float."""
    if value is None:
        return None
    value = Fraction(value)
    return value.numerator if value.denominator == 1 else float(value)


def _shares_json(
    shares: dict[str, Fraction | None], fields: tuple[str, ...]
) -> dict[str, int | float | None]:
    return {f: json_number(shares.get(f)) for f in fields}


def model_shares(model: ModelSpec, instances: int) -> dict[str, Fraction | None]:
    """The model's per-instance shares: capacity / N for every limit it sets."""
    limits = model.limits.as_dict()
    return {f: (Fraction(limits[f], instances) if f in limits else None) for f in SHARE_FIELDS}


def job_slots(
    spec: PolicySpec,
    job: JobType,
    model: ModelSpec,
    instances: int,
    memory_budget_kb: int | None,
    held: Held = NOTHING_HELD,
) -> tuple[int, str]:
    """``slots[j][m]`` and the limit that binds it, with ``held`` taken off the capacities first."""
    ratio = job.exact_ratio
    limits = model.limits.as_dict()
    candidates: list[tuple[int, str]] = []
    for limit, (estimate_field, _) in WINDOW_LIMITS.items():
        if limit in limits:
            estimate = getattr(job.estimate, estimate_field)
            left = max(0, limits[limit] - held.of(limit))
            candidates.append((math.floor(Fraction(left, estimate * instances) * ratio), limit))
    if "maxConcurrentRequests" in limits:
        left = max(0, limits["maxConcurrentRequests"] - held.leases)
        candidates.append((math.floor(Fraction(left, instances) * ratio), "maxConcurrentRequests"))
    if memory_budget_kb is not None and job.estimate.memory_kb > 0:
        candidates.append((math.floor(memory_budget_kb * ratio / job.estimate.memory_kb), MEMORY))
    # Validation guarantees at least one limit; ties name the first limit in policy order.
    return min(candidates, key=lambda c: c[0])


def pool_slots(spec: PolicySpec, model: ModelSpec, instances: int) -> int:
    """``pools[m].totalSlots``: job-type-blind, from the average estimate of the types that may use m."""
    users = [j for j in spec.job_types if model.name in spec.models_of(j)]
    limits = model.limits.as_dict()
    bounds: list[int] = []
    for limit, (estimate_field, _) in WINDOW_LIMITS.items():
        if limit in limits:
            if not users:
                return 0
            average = Fraction(sum(getattr(j.estimate, estimate_field) for j in users), len(users))
            bounds.append(math.floor(Fraction(limits[limit]) / average / instances))
    if "maxConcurrentRequests" in limits:
        bounds.append(limits["maxConcurrentRequests"] // instances)
    return min(bounds)


def concurrency_ceiling(model: ModelSpec, instances: int, held: Held, excess: int) -> int | None:
    """The most leases one instance may hold on ``model`` while the fleet holds ``excess`` leases
    above the shares: ``floor((maxConcurrentRequests - held) / N) - excess`` (at least 0); None
    where nothing is to be kept free (no excess, or no concurrency limit)."""
    limit = model.limits.as_dict().get("maxConcurrentRequests")
    if limit is None or excess <= 0:
        return None
    return max(0, max(0, limit - held.leases) // instances - excess)


def compute_allocation(
    spec: PolicySpec,
    instances: int,
    memory_budget_kb: int | None = None,
    held: Mapping[str, Held] | None = None,
    excess: Mapping[str, int] | None = None,
) -> Allocation:
    """The allocation for one instance out of ``instances``.

    ``memory_budget_kb`` defaults to the policy's ``instance.memoryBudgetMB``; a running instance
    without one passes 80% of its container's memory limit instead. ``held``: per model, the leases
    of vanished instances, taken off its capacity before it is divided (models not in the policy
    are ignored). ``excess``: per model, the fleet's leases above the shares (the allocation
    record's), which set :attr:`Allocation.ceilings` for the enforced models.
    """
    if instances < 1:
        raise ValueError(f"instances: {instances} is not valid: at least 1 instance is needed")
    if memory_budget_kb is None and spec.instance.memory_budget_mb is not None:
        memory_budget_kb = spec.instance.memory_budget_mb * 1024
    names = {m.name for m in spec.models}
    kept = {m: h for m, h in (held or {}).items() if m in names and h != NOTHING_HELD}
    slots: dict[str, dict[str, SlotShare]] = {}
    for job in spec.job_types:
        per_model: dict[str, SlotShare] = {}
        for name in spec.models_of(job):
            model = spec.model(name)
            held_here = kept.get(name, NOTHING_HELD)
            n, binding = job_slots(spec, job, model, instances, memory_budget_kb, held_here)
            per_model[name] = SlotShare(n, binding, model_shares(model, instances))
        slots[job.name] = per_model
    pools = {m.name: Pool(pool_slots(spec, m, instances), model_shares(m, instances)) for m in spec.models}
    over: dict[str, int] = {}
    ceilings: dict[str, int] = {}
    for model in spec.models:
        n = (excess or {}).get(model.name, 0)
        if spec.mode_of(model.name) == "shadow":
            continue
        ceiling = concurrency_ceiling(model, instances, kept.get(model.name, NOTHING_HELD), n)
        if ceiling is not None:
            over[model.name], ceilings[model.name] = n, ceiling
    return Allocation(instances, pools, slots, memory_budget_kb, kept, over, ceilings)


def pool_params(spec: PolicySpec) -> dict[str, list[tuple[int, int]]]:
    """Integer pairs (p, q) per model such that ``pools[m].totalSlots == min(p // (q * N))``.

    This is what the Redis scripts need to recompute pools atomically for any N with integer
    arithmetic only (exact in Lua's doubles up to 2**53). An empty list means no job type may
    use the model: its pool is 0.
    """
    out: dict[str, list[tuple[int, int]]] = {}
    for model in spec.models:
        users = [j for j in spec.job_types if model.name in spec.models_of(j)]
        limits = model.limits.as_dict()
        pairs: list[tuple[int, int]] = []
        if users or set(limits) == {"maxConcurrentRequests"}:
            for limit, (estimate_field, _) in WINDOW_LIMITS.items():
                if limit in limits:
                    # capacity / (sum / k) = capacity * k / sum
                    per_job = Fraction(
                        limits[limit] * len(users), sum(getattr(j.estimate, estimate_field) for j in users)
                    )
                    pairs.append((per_job.numerator, per_job.denominator))
            if "maxConcurrentRequests" in limits:
                pairs.append((limits["maxConcurrentRequests"], 1))
        out[model.name] = pairs
    return out
