"""The status of a policy, from what the operator observed: pure, so it is tested without a cluster.

:func:`build_status` turns an :class:`Observation` (the validated policy, its Deployment, what
Redis holds) into the ``status`` document (:class:`limiter.k8s.status.PolicyStatus`);
:func:`status_patch` keeps only what differs from the stored status, so an unchanged fleet is never
written to (a restarted operator patches nothing). A condition keeps its ``lastTransitionTime``
until its status changes.

Conditions (reasons in docs/operator.md):

- ``Ready``: the current generation is valid and in Redis, every pod is ready and every pod
  heartbeats. False names the first thing that is not so.
- ``Projected``: Redis holds the current generation.
- ``Degraded``: heartbeating instances and ready pods disagree (a pod that left Redis but passes
  its probe, or an instance without a ready pod).
- ``RedisUnavailable``: the operator cannot reach the policy's Redis (or has none to reach).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from limiter.core.membership import AllocationRecord
from limiter.k8s.status import CONDITION_TYPES, Condition, PolicyStatus, PoolStatus, ShadowStatus, WouldRefuse

from .builders import ParsedPolicy

#: The status fields this operator owns (others, written by someone else, are left alone).
OWNED_FIELDS = tuple(PolicyStatus.model_json_schema(by_alias=True)["properties"])
MODELS_COLUMN_WIDTH = 60


@dataclass(frozen=True, slots=True)
class FleetState:
    """The policy's Deployment as last seen."""

    replicas: int
    """spec.replicas: the pods the operator asked for."""
    ready_replicas: int
    """status.readyReplicas."""

    @classmethod
    def from_deployment(cls, deployment: Mapping[str, Any]) -> FleetState:
        """From a Deployment object (absent counts are 0)."""
        return cls(
            replicas=int((deployment.get("spec") or {}).get("replicas") or 0),
            ready_replicas=int((deployment.get("status") or {}).get("readyReplicas") or 0),
        )


@dataclass(frozen=True, slots=True)
class RedisState:
    """What the policy's Redis holds."""

    server: str
    """host:port (never credentials), for messages."""
    projected_generation: int | None
    """The generation of the projected policy, None when none is."""
    allocation: AllocationRecord | None
    """The allocation record, None before any instance registered."""
    shadow_counts: Mapping[str, int] | None = None
    """The fleet's shadow totals: reason -> admissions that enforcing would have refused."""


@dataclass(frozen=True, slots=True)
class RedisProblem:
    """Why Redis could not be read: ``reason`` is a condition reason."""

    reason: str
    """Unreachable, NoRedis or SecretUnreadable."""
    message: str


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything the status is computed from."""

    policy: ParsedPolicy
    fleet: FleetState | None
    """None: the policy has no Deployment (yet)."""
    redis: RedisState | RedisProblem


def models_column(names: tuple[str, ...]) -> str:
    """The model names for ``kubectl get rlp``, shortened to fit a column ("a,b,+3 more")."""
    text = ",".join(names)
    if len(text) <= MODELS_COLUMN_WIDTH:
        return text
    shown: list[str] = []
    for name in names:
        rest = len(names) - len(shown) - 1
        if len(",".join([*shown, name])) + len(f",+{rest} more") > MODELS_COLUMN_WIDTH:
            break
        shown.append(name)
    return ",".join([*shown, f"+{len(names) - len(shown)} more"])


def _pools(allocation: AllocationRecord) -> list[PoolStatus] | None:
    pools = [
        PoolStatus.model_validate({"name": model, "totalSlots": pool.total_slots, **pool.shares})
        for model, pool in allocation.pools.items()
    ]
    return pools or None


def _shadow(policy: ParsedPolicy, redis: RedisState | None) -> ShadowStatus | None:
    """status.shadow: while a model of the current generation is in shadow, or once shadow
    admissions were counted (the totals stay after switching back to enforce)."""
    spec = policy.spec
    shadow_models = [m.name for m in spec.models if spec.mode_of(m.name) == "shadow"] if spec else []
    counts = dict(redis.shadow_counts or {}) if redis else {}
    if not shadow_models and not any(counts.values()):
        return None
    return ShadowStatus(
        mode=spec.mode if spec else None,
        shadow_models=shadow_models or None,
        would_refuse=[WouldRefuse(reason=r, count=n) for r, n in sorted(counts.items())] or None,
    )


def _condition(
    kind: str, status: str, reason: str, message: str, generation: int, previous: Mapping[str, Any], now: str
) -> Condition:
    before = previous.get(kind)
    since = before.get("lastTransitionTime") if before and before.get("status") == status else None
    return Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since or now,
        observed_generation=generation,
    )


def build_status(obs: Observation, previous: Mapping[str, Any] | None, now: str) -> dict[str, Any]:
    """The status document for ``obs``; ``previous`` is the stored status (for transition times),
    ``now`` the RFC 3339 time of this observation."""
    policy = obs.policy
    gen = policy.ref.generation
    before: dict[str, Mapping[str, Any]] = {
        str(c.get("type")): c for c in (previous or {}).get("conditions") or [] if isinstance(c, Mapping)
    }
    redis = obs.redis if isinstance(obs.redis, RedisState) else None
    problem = obs.redis if isinstance(obs.redis, RedisProblem) else None
    fleet = obs.fleet
    projected = redis.projected_generation if redis else None
    allocation = redis.allocation if redis else None
    instances = allocation.instance_count if allocation else 0

    keeps = f"the fleet keeps generation {projected}" if projected else "nothing is projected"
    conditions: dict[str, tuple[str, str, str]] = {}

    # RedisUnavailable
    if problem is not None:
        conditions["RedisUnavailable"] = ("True", problem.reason, problem.message)
    else:
        assert redis is not None
        conditions["RedisUnavailable"] = ("False", "Connected", f"Redis at {redis.server} answers")

    # Projected
    if redis is None:
        assert problem is not None
        conditions["Projected"] = ("Unknown", "RedisUnavailable", problem.message)
    elif projected == gen:
        conditions["Projected"] = ("True", "Projected", f"generation {gen} is in Redis at {redis.server}")
    elif not policy.valid:
        conditions["Projected"] = ("False", "InvalidPolicy", f"generation {gen} is invalid; {keeps}")
    elif projected is not None and projected > gen:
        conditions["Projected"] = (
            "False",
            "GenerationConflict",
            f"Redis at {redis.server} holds generation {projected}, newer than this object's {gen} "
            "(left by an earlier policy of the same name?): delete and re-create the policy",
        )
    else:
        conditions["Projected"] = ("False", "Pending", f"generation {gen} is not in Redis yet; {keeps}")

    # Degraded
    if redis is None:
        assert problem is not None
        conditions["Degraded"] = ("Unknown", "RedisUnavailable", problem.message)
    else:
        ready = fleet.ready_replicas if fleet else 0
        if instances != ready:
            conditions["Degraded"] = (
                "True",
                "InstancesDisagree",
                f"{instances} instance(s) heartbeat in Redis but {ready} pod(s) are ready",
            )
        else:
            conditions["Degraded"] = (
                "False",
                "InstancesAgree",
                f"{instances} instance(s) heartbeat in Redis and {ready} pod(s) are ready",
            )

    # Ready: the first thing that is not right.
    if not policy.valid:
        ready_state = (
            "False",
            "InvalidPolicy",
            f"generation {gen} is invalid and was not applied ({keeps}): " + "; ".join(policy.problems),
        )
    elif problem is not None:
        ready_state = ("False", "RedisUnavailable", problem.message)
    elif conditions["Projected"][0] != "True":
        ready_state = ("False", conditions["Projected"][1], conditions["Projected"][2])
    elif fleet is None:
        ready_state = ("False", "Pending", "the Deployment of limiter pods does not exist yet")
    elif fleet.ready_replicas < fleet.replicas:
        ready_state = (
            "False",
            "PodsNotReady",
            f"{fleet.ready_replicas} of {fleet.replicas} limiter pod(s) ready",
        )
    elif fleet.ready_replicas > fleet.replicas:
        ready_state = (
            "False",
            "ScalingDown",
            f"{fleet.ready_replicas} limiter pod(s) ready for {fleet.replicas} wanted "
            "(scaling down or rolling out)",
        )
    elif instances != fleet.replicas:
        ready_state = (
            "False",
            "InstancesNotJoined",
            f"{instances} instance(s) heartbeat in Redis for {fleet.replicas} pod(s)",
        )
    else:
        ready_state = (
            "True",
            "FleetReady",
            f"{fleet.replicas} pod(s) ready and heartbeating, running generation {gen}",
        )
    conditions["Ready"] = ready_state

    status = PolicyStatus(
        observed_generation=gen,
        projected_generation=projected,
        models=models_column(policy.model_names) or None,
        replicas=fleet.replicas if fleet else None,
        ready_replicas=fleet.ready_replicas if fleet else None,
        instance_count=instances if redis else None,
        pools=_pools(allocation) if allocation else None,
        shadow=_shadow(policy, redis),
        conditions=[
            _condition(kind, *conditions[kind], generation=gen, previous=before, now=now)
            for kind in CONDITION_TYPES
        ],
    )
    return status.to_json()


def status_patch(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch that turns ``current`` into ``desired`` for the fields the operator owns:
    changed fields, and None for fields to remove. None when nothing differs."""
    current = current or {}
    patch: dict[str, Any] = {}
    for key in OWNED_FIELDS:
        if key in desired:
            if current.get(key) != desired[key]:
                patch[key] = _merge(current.get(key), desired[key])
        elif current.get(key) is not None:
            patch[key] = None
    return patch or None


def _merge(current: Any, desired: Any) -> Any:
    """``desired`` as a merge patch over ``current``: an object nested in status (status.shadow)
    is merged key by key, so a key it no longer has must be sent as None to go."""
    if not isinstance(current, Mapping) or not isinstance(desired, Mapping):
        return desired
    out = {k: _merge(current.get(k), v) for k, v in desired.items()}
    out.update({k: None for k in current if k not in desired})
    return out
