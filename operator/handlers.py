"""The kopf handlers: thin functions that read a policy, call the pure builders, apply, and patch status.

- create / update (of spec) / resume -> :func:`reconcile`: validate; when valid, apply the owned
  objects (only what differs) and project the generation into Redis when Redis holds an older
  one; then patch whatever status fields changed. An invalid generation touches nothing: the
  fleet keeps running the last valid one, and the status says why (Ready=False, InvalidPolicy).
- a timer per policy -> :func:`refresh`: the same observation every few seconds (status from
  Redis and the Deployment; a projection lost with Redis's data is put back).
- delete -> :func:`finalize` (finalizer): stop the pods, then remove the policy's Redis keys.

Restarting the operator changes nothing: every write is preceded by a comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from limiter.core.policy import API_GROUP, API_VERSION, KIND
from limiter.core.urls import redis_url_problem
from limiter.k8s.crd import PLURAL
from limiter.redis.creditstore import CreditStore
from limiter.redis.plumbing import StoreUnavailable

from . import projection
from .builders import (
    MANAGER,
    NoRedis,
    ParsedPolicy,
    RedisSource,
    build_children,
    child_name,
    parse_policy,
    projected_spec,
    redis_source,
)
from .kube import Kube, KubeError, NotOwned, owned_by
from .metrics import HandlerRun, OperatorMetrics
from .settings import OperatorSettings
from .status import (
    FleetState,
    Observation,
    RedisProblem,
    RedisState,
    build_status,
    status_patch,
)

RESOURCE = (API_GROUP, API_VERSION, PLURAL)
DEPLOYMENTS = ("apps", "v1", "deployments")
MANAGED_BY = {"app.kubernetes.io/managed-by": MANAGER}
DIFFBASE = f"{API_GROUP}/last-handled-configuration"
"""kopf's record of the last spec the change handlers processed (set once reconcile succeeded)."""


@dataclass
class Context:
    """What every handler shares, handed to kopf as the operator's memo."""

    settings: OperatorSettings
    kube: Kube
    stores: projection.Stores = field(default_factory=projection.Stores)
    urls: dict[str, str] = field(default_factory=dict)
    """Redis URLs read from Secrets, by policy uid: the timer never reads Secrets, and deletion
    still finds Redis when the Secret went first (a namespace being deleted)."""
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    """What the handlers did and observed (served when FLEET_LIMITER_OPERATOR_METRICS_ADDRESS is set)."""


def _ctx(memo: Any) -> Context:
    ctx = memo.ctx
    assert isinstance(ctx, Context)
    return ctx


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- Redis --------------------------------------------------------------------------------------------


async def _redis_url(ctx: Context, policy: ParsedPolicy, source: RedisSource, *, refresh: bool) -> str:
    """The URL to connect to; a Secret is read on reconcile (``refresh``) or when not cached."""
    if source.secret is None:
        return source.url or ""
    uid = policy.ref.uid
    if refresh or uid not in ctx.urls:
        ctx.urls[uid] = await ctx.kube.secret_value(
            policy.ref.namespace, source.secret.name, source.secret.key
        )
    return ctx.urls[uid]


async def _observe_redis(
    ctx: Context, policy: ParsedPolicy, *, refresh: bool
) -> tuple[RedisState | RedisProblem, bool]:
    """What Redis holds (projecting a valid generation Redis lacks), or why it cannot be read;
    and whether a projection was written."""
    try:
        source = redis_source(policy.redis, ctx.settings)
    except NoRedis as exc:
        return RedisProblem("NoRedis", str(exc)), False
    try:
        url = await _redis_url(ctx, policy, source, refresh=refresh)
    except KubeError as exc:
        return RedisProblem("SecretUnreadable", f"cannot read {source.describe()}: {exc}"), False
    if redis_url_problem(url) is not None:
        return RedisProblem(
            "InvalidRedisURL", f"{source.describe()} is not a redis://, rediss:// or unix:// URL"
        ), False
    try:
        store = await ctx.stores.get(url, policy.ref.namespace, policy.ref.name)
    except ValueError as exc:  # redis-py's URL parsing: a bad port, an unknown option
        return RedisProblem("InvalidRedisURL", f"{source.describe()}: {exc}"), False
    spec_json = projected_spec(policy.spec) if policy.spec is not None else None
    try:
        state, projected = await projection.sync(store, spec_json, policy.ref.generation)
    except StoreUnavailable as exc:
        return RedisProblem("Unreachable", str(exc)), False
    if projected:
        ctx.metrics.projected_into_redis(policy.ref.namespace, policy.ref.name)
    return state, projected


# -- status ---------------------------------------------------------------------------------------------


def _patch_status(ctx: Context, body: kopf.Body, patch: kopf.Patch, observation: Observation) -> None:
    """Patch what changed in the status; the policy's metrics follow the same document."""
    current = dict(body.get("status") or {})
    desired = build_status(observation, current, _now())
    changed = status_patch(current, desired)
    if changed:
        patch.setdefault("status", {}).update(changed)
    if isinstance(observation.redis, RedisProblem):
        ctx.metrics.error(observation.redis.reason)
    if not body.get("metadata", {}).get("deletionTimestamp"):  # its series go with the finalizer
        ref = observation.policy.ref
        ctx.metrics.observe(ref.namespace, ref.name, desired, isinstance(observation.redis, RedisState))


async def _fleet_from_api(ctx: Context, policy: ParsedPolicy) -> FleetState | None:
    ref = policy.ref
    deployment = await ctx.kube.get("apps/v1", "Deployment", ref.namespace, child_name(ref.name))
    if deployment is None or not owned_by(deployment, ref.uid):
        return None
    return FleetState.from_deployment(deployment)


# -- handlers ---------------------------------------------------------------------------------------------


async def _apply_children(
    ctx: Context,
    body: kopf.Body,
    policy: ParsedPolicy,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> FleetState | None:
    """Apply the owned objects of a valid policy (only what differs); the Deployment's state, or
    None when no Redis is configured (no pods without a Redis to join; the status says so)."""
    assert policy.spec is not None
    try:
        source = redis_source(policy.redis, ctx.settings)
    except NoRedis:
        return None
    fleet = None
    for obj in build_children(policy.ref, policy.spec, source, ctx.settings):
        try:
            applied = await ctx.kube.apply(obj, policy.ref.uid)
        except NotOwned as exc:
            ctx.metrics.error("NotOwned")
            kopf.warn(body, reason="NotOwned", message=str(exc))
            raise kopf.TemporaryError(str(exc), delay=60) from None
        except KubeError as exc:
            ctx.metrics.error("KubeApi")
            raise kopf.TemporaryError(f"applying {obj['kind']}: {exc}", delay=10) from None
        if applied.action != "unchanged":
            what = f"{applied.action} {obj['kind']} {obj['metadata']['name']}"
            detail = f" ({'; '.join(applied.changes[:3])})" if applied.changes else ""
            logger.info("%s%s", what, detail)
            kopf.info(body, reason=applied.action.capitalize(), message=what + detail)
        if obj["kind"] == "Deployment":
            fleet = FleetState.from_deployment(applied.obj)
    return fleet


async def reconcile(
    body: kopf.Body,
    patch: kopf.Patch,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    memo: Any,
    reason: str,
    **_: Any,
) -> None:
    """create, update (of spec) and resume: make the fleet match the current generation."""
    ctx = _ctx(memo)
    with ctx.metrics.handling("reconcile") as run:
        await _reconcile(ctx, run, body, patch, logger, reason)


async def _reconcile(
    ctx: Context,
    run: HandlerRun,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    reason: str,
) -> None:
    policy = parse_policy(body)
    fleet: FleetState | None = None
    if policy.spec is None:
        run.outcome = "invalid"
        problems = "; ".join(policy.problems)
        logger.warning("generation %d is invalid and was not applied: %s", policy.ref.generation, problems)
        if reason != "resume":  # an event per bad edit, not per operator restart
            kopf.warn(body, reason="InvalidPolicy", message=problems[:1000])
    else:
        fleet = await _apply_children(ctx, body, policy, logger)
    if fleet is None:
        try:
            fleet = await _fleet_from_api(ctx, policy)
        except KubeError as exc:
            ctx.metrics.error("KubeApi")
            raise kopf.TemporaryError(f"reading the Deployment: {exc}", delay=10) from None
    redis, projected = await _observe_redis(ctx, policy, refresh=True)
    if projected:
        kopf.info(
            body, reason="Projected", message=f"generation {policy.ref.generation} projected into Redis"
        )
    if isinstance(redis, RedisProblem):
        logger.warning("Redis: %s", redis.message)
    _patch_status(ctx, body, patch, Observation(policy, fleet, redis))


async def refresh(
    body: kopf.Body,
    patch: kopf.Patch,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    memo: Any,
    limiter_deployments: kopf.Index[str, FleetState],
    **_: Any,
) -> None:
    """The timer: status from Redis and the Deployment (kept current by a watch, no API call).

    Also repairs drift: a Deployment deleted or scaled by hand is applied again (only once the
    policy was reconciled, so the timer never races the first creation)."""
    ctx = _ctx(memo)
    with ctx.metrics.handling("refresh"):
        await _refresh(ctx, body, patch, logger, limiter_deployments)


async def _refresh(
    ctx: Context,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    limiter_deployments: kopf.Index[str, FleetState],
) -> None:
    policy = parse_policy(body)
    fleet = next(iter(limiter_deployments.get(policy.ref.uid, [])), None)
    handled = DIFFBASE in (body.get("metadata", {}).get("annotations") or {})
    if (
        policy.spec is not None
        and handled
        and (fleet is None or fleet.replicas != policy.spec.fleet.replicas)
    ):
        fleet = await _apply_children(ctx, body, policy, logger) or fleet
    redis, projected = await _observe_redis(ctx, policy, refresh=False)
    if projected:
        kopf.info(
            body, reason="Projected", message=f"generation {policy.ref.generation} projected into Redis"
        )
    _patch_status(ctx, body, patch, Observation(policy, fleet, redis))


def limiter_deployments(body: kopf.Body, **_: Any) -> dict[str, FleetState]:
    """Index of the operator's Deployments by the uid of the policy that owns them."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{API_GROUP}/"):
            return {ref["uid"]: FleetState.from_deployment(body)}
    return {}


async def finalize(
    body: kopf.Body, logger: logging.Logger | logging.LoggerAdapter[Any], memo: Any, runtime: Any, **_: Any
) -> None:
    """delete: stop the limiter pods (they would register again), then remove the Redis keys."""
    ctx = _ctx(memo)
    with ctx.metrics.handling("finalize"):
        await _finalize(ctx, body, logger, runtime)


async def _finalize(
    ctx: Context, body: kopf.Body, logger: logging.Logger | logging.LoggerAdapter[Any], runtime: Any
) -> None:
    policy = parse_policy(body)
    ref = policy.ref
    name = child_name(ref.name)
    try:
        deployment = await ctx.kube.get("apps/v1", "Deployment", ref.namespace, name)
        if deployment is not None and owned_by(deployment, ref.uid):
            if not deployment["metadata"].get("deletionTimestamp"):
                await ctx.kube.delete("apps/v1", "Deployment", ref.namespace, name)
                logger.info("deleting Deployment %s and its pods before the Redis keys", name)
            raise kopf.TemporaryError("waiting for the limiter pods to stop", delay=1)
    except KubeError as exc:
        ctx.metrics.error("KubeApi")
        raise kopf.TemporaryError(f"deleting the Deployment: {exc}", delay=5) from None
    try:
        source = redis_source(policy.redis, ctx.settings)
        url = await _redis_url(ctx, policy, source, refresh=False)
        store = await ctx.stores.get(url, ref.namespace, ref.name)
        deleted = await store.delete_policy()
        # The policy's credit budgets go with it (same hash tag, same Redis).
        deleted += await CreditStore(store.client, ref.namespace, ref.name).delete_all()
    except NoRedis:
        deleted = 0
    except ValueError as exc:  # a Redis URL that cannot be parsed: no keys could have been written
        logger.warning("no Redis keys to remove: %s", exc)
        deleted = 0
    except (KubeError, StoreUnavailable) as exc:
        ctx.metrics.error("KubeApi" if isinstance(exc, KubeError) else "Unreachable")
        if runtime.total_seconds() < ctx.settings.delete_timeout_seconds:
            raise kopf.TemporaryError(f"removing the Redis keys: {exc}", delay=5) from None
        message = f"gave up removing the Redis keys of {ref.namespace}/{ref.name} after {runtime}: {exc}"
        logger.warning(message)
        kopf.warn(body, reason="RedisKeysLeft", message=message)
        ctx.metrics.error("RedisKeysLeft")
        deleted = 0
    await ctx.stores.drop(ref.namespace, ref.name)
    ctx.metrics.forget(ref.namespace, ref.name)
    ctx.urls.pop(ref.uid, None)
    logger.info("removed %d Redis key(s) of %s/%s", deleted, ref.namespace, ref.name)


async def cleanup(memo: Any, **_: Any) -> None:
    """Operator shutdown: close the Redis connections and the API client."""
    ctx = _ctx(memo)
    await ctx.stores.close()
    ctx.kube.close()


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    """Register every handler with ``registry``; the timer's interval comes from ``settings``."""

    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Our own names for kopf's bookkeeping, all in annotations (the status schema is ours only).
        settings.persistence.finalizer = f"{API_GROUP}/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=API_GROUP, key=DIFFBASE.split("/", 1)[1]
        )
        # One ClusterKopfPeering object for every replica, namespaced or not (one RBAC rule).
        settings.peering.clusterwide = True
        settings.peering.stealth = True
        settings.posting.reporting_component = MANAGER
        # The CRD exists before the operator starts (the chart's crds/): no CRD or namespace watch.
        settings.scanning.disabled = True
        # Watch only the operator's own Deployments (server-side), not every Deployment.
        settings.watching.label_selectors[DEPLOYMENTS] = f"app.kubernetes.io/managed-by={MANAGER}"

    kopf.on.startup(registry=registry)(configure)
    # kopf registers its login handlers in its default registry only; this is our own registry.
    kopf.on.login(registry=registry)(kopf.login_via_client)
    kopf.on.resume(*RESOURCE, registry=registry)(reconcile)
    kopf.on.create(*RESOURCE, registry=registry)(reconcile)
    kopf.on.update(*RESOURCE, field="spec", registry=registry)(reconcile)
    kopf.on.delete(*RESOURCE, registry=registry)(finalize)
    # refresh() names the index it reads; kopf passes indices as keyword arguments by handler id.
    kopf.timer(*RESOURCE, interval=settings.status_interval_seconds, registry=registry)(refresh)  # type: ignore[arg-type]
    kopf.index(*DEPLOYMENTS, labels=MANAGED_BY, registry=registry)(limiter_deployments)
    kopf.on.cleanup(registry=registry)(cleanup)
