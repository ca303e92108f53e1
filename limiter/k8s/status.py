"""The ``status`` of a RateLimitPolicy: what the operator reports, as a model.

Pure: no I/O. The same models generate the status part of the CRD schema (:mod:`limiter.k8s.crd`) and
build the status the operator patches (``limiter_operator.status``), so the schema and the writes
cannot drift apart. Field names on the wire are camelCase, lists hold named objects, and every
field has a description so ``kubectl explain rlp.status`` is useful.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

#: The condition types the operator sets, in the order it writes them.
CONDITION_TYPES: tuple[str, ...] = ("Ready", "Projected", "Degraded", "RedisUnavailable")


class _StatusModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        serialize_by_alias=True,
    )

    def to_json(self) -> dict[str, Any]:
        """camelCase JSON-ready data without unset (None) fields, as the operator patches it."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Condition(_StatusModel):
    """One aspect of the policy's state (Kubernetes condition conventions)."""

    type: str = Field(min_length=1)
    """Ready (the fleet runs the current generation with every pod ready and heartbeating),
    Projected (Redis holds the current generation), Degraded (heartbeating instances and ready
    pods disagree) or RedisUnavailable (the operator cannot reach the policy's Redis)."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str = Field(min_length=1, pattern=r"^[A-Za-z][A-Za-z0-9]*$")
    """Why the condition has this status, as one CamelCase word (e.g. InvalidPolicy)."""
    message: str = ""
    """What happened, for a person: the validation error, the unreachable server, the counts."""
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    """When the status last changed (RFC 3339, UTC)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation the condition was computed for."""


class PoolStatus(_StatusModel):
    """One model's pool as the fleet divides it now: capacity per live instance."""

    name: str = Field(min_length=1)
    """The model's name."""
    total_slots: int = Field(ge=0)
    """Job-type-blind slots per instance: pools[m].totalSlots of the allocation."""
    tokens_per_minute: float | None = Field(default=None, ge=0)
    """Per-instance share of tokensPerMinute (capacity / live instances)."""
    requests_per_minute: float | None = Field(default=None, ge=0)
    """Per-instance share of requestsPerMinute (capacity / live instances)."""
    tokens_per_day: float | None = Field(default=None, ge=0)
    """Per-instance share of tokensPerDay (capacity / live instances)."""
    requests_per_day: float | None = Field(default=None, ge=0)
    """Per-instance share of requestsPerDay (capacity / live instances)."""
    max_concurrent_requests: float | None = Field(default=None, ge=0)
    """Per-instance share of maxConcurrentRequests (capacity / live instances)."""


class WouldRefuse(_StatusModel):
    """How many admissions in shadow mode enforcing would have refused, for one reason."""

    reason: str = Field(min_length=1)
    """The refusal reason code (docs/shadow.md), e.g. queue_full or a limit such as tokens_per_minute."""
    count: int = Field(ge=0)
    """Admissions counted under that reason, summed over the fleet's instances."""


class ShadowStatus(_StatusModel):
    """Shadow mode (spec.mode, models[].mode): what is in shadow and what enforcing would have refused."""

    mode: Literal["enforce", "shadow"] | None = None
    """spec.mode of the current generation: the policy-wide mode (absent while it is invalid)."""
    shadow_models: list[str] | None = None
    """The models whose mode in force is shadow (their own mode, else spec.mode)."""
    would_refuse: list[WouldRefuse] | None = None
    """Admissions that enforcing would have refused, by reason, summed over every instance since the
    policy was created (kept after switching back to enforce)."""


class PolicyStatus(_StatusModel):
    """What the operator observed and did for this policy; written by the operator only."""

    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation the operator last acted on (valid or not)."""
    projected_generation: int | None = Field(default=None, ge=0)
    """The generation Redis holds: the one the limiter pods run (may be older than
    observedGeneration while a newer generation is invalid)."""
    models: str | None = None
    """The policy's model names, comma-separated (the MODELS column of kubectl get rlp)."""
    replicas: int | None = Field(default=None, ge=0)
    """Limiter pods the operator runs for this policy (spec.fleet.replicas of the last valid
    generation)."""
    ready_replicas: int | None = Field(default=None, ge=0)
    """Limiter pods passing their readiness probe."""
    instance_count: int | None = Field(default=None, ge=0)
    """Live instances heartbeating in Redis: the N that divides every model's capacity."""
    pools: list[PoolStatus] | None = None
    """Per model, the pool of each instance for the current instance count, in policy order."""
    shadow: ShadowStatus | None = None
    """Shadow mode: present while a model is in shadow or shadow admissions were counted."""
    conditions: list[Condition] | None = None
    """Ready, Projected, Degraded and RedisUnavailable."""
