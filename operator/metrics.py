"""The operator's Prometheus metrics, served on ``FLEET_LIMITER_OPERATOR_METRICS_ADDRESS``.

The handlers count themselves (one :meth:`OperatorMetrics.handling` block per call: outcome and
duration) and the problems they meet (:meth:`OperatorMetrics.error`); the per-policy gauges are set
from the same status document the handlers write (:meth:`OperatorMetrics.observe`), so a dashboard
and ``kubectl get rlp`` never disagree, and are removed when the policy is deleted. Names and
labels are documented in docs/metrics.md; every metric is prefixed ``fleet_limiter_operator_``.

Only the replica that holds the peering acts, so only its per-policy gauges are set; standby
replicas serve their counters (at 0) and no per-policy series.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler

HANDLERS = ("reconcile", "refresh", "finalize")
OUTCOMES = ("success", "invalid", "retry", "error")
"""success; invalid: the generation was refused (status says why); retry: kopf will call again
(a transient API or Redis problem, or waiting for pods to stop); error: an unexpected exception."""
ERROR_REASONS = (
    "KubeApi",
    "NotOwned",
    "Unreachable",
    "NoRedis",
    "SecretUnreadable",
    "InvalidRedisURL",
    "RedisKeysLeft",
    "Unexpected",
)
"""The problems counted in ``fleet_limiter_operator_errors_total{reason}``: the Redis ones are the
status's RedisUnavailable reasons."""
CONDITION_STATUSES = ("True", "False", "Unknown")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

_POLICY = ["namespace", "policy"]


class HandlerRun:
    """One handler call; the handler sets :attr:`outcome` when it ends in something other than success."""

    __slots__ = ("outcome",)

    def __init__(self) -> None:
        self.outcome = "success"


class OperatorMetrics:
    """The operator's metrics, in a registry of their own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.handled = Counter(
            "fleet_limiter_operator_reconciles",
            "Handler calls by handler (reconcile, refresh, finalize) and outcome.",
            ["handler", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "fleet_limiter_operator_errors",
            "Problems the handlers met, by reason (the status's reasons).",
            ["reason"],
            registry=r,
        )
        self.duration = Histogram(
            "fleet_limiter_operator_handler_duration_seconds",
            "Time a handler call took.",
            ["handler"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.projections = Counter(
            "fleet_limiter_operator_projections",
            "Policy generations the operator wrote into Redis.",
            _POLICY,
            registry=r,
        )
        self.generation = Gauge(
            "fleet_limiter_operator_policy_generation",
            "metadata.generation of the policy (the current spec).",
            _POLICY,
            registry=r,
        )
        self.projected = Gauge(
            "fleet_limiter_operator_projected_generation",
            "Generation of the policy Redis holds (what the pods run); 0 when none or unknown.",
            _POLICY,
            registry=r,
        )
        self.instances = Gauge(
            "fleet_limiter_operator_instances",
            "Limiter instances heartbeating in Redis for the policy.",
            _POLICY,
            registry=r,
        )
        self.replicas = Gauge(
            "fleet_limiter_operator_replicas",
            "Limiter pods the policy's Deployment asks for.",
            _POLICY,
            registry=r,
        )
        self.ready_replicas = Gauge(
            "fleet_limiter_operator_ready_replicas",
            "Ready limiter pods of the policy.",
            _POLICY,
            registry=r,
        )
        self.redis_up = Gauge(
            "fleet_limiter_operator_redis_up",
            "1 while the operator reads the policy's Redis, else 0.",
            _POLICY,
            registry=r,
        )
        self.condition = Gauge(
            "fleet_limiter_operator_policy_condition",
            "1 for the status of each condition of the policy (Ready, Projected, Degraded, "
            "RedisUnavailable), 0 for the other statuses.",
            [*_POLICY, "condition", "status"],
            registry=r,
        )
        self.policies = Gauge(
            "fleet_limiter_operator_policies", "Policies this replica observes.", registry=r
        )
        self._seen: dict[tuple[str, str], set[str]] = {}
        # Known series start at 0, so rate() and increase() see the first event.
        for handler in HANDLERS:
            self.duration.labels(handler)
            for outcome in OUTCOMES:
                self.handled.labels(handler, outcome)
        for reason in ERROR_REASONS:
            self.errors.labels(reason)

    @contextlib.contextmanager
    def handling(self, handler: str) -> Iterator[HandlerRun]:
        """Count one call of ``handler`` and time it. A :class:`kopf.TemporaryError` counts as
        ``retry``, any other exception as ``error`` (and an ``Unexpected`` error); cancellation
        (the operator stopping) is not counted."""
        run = HandlerRun()
        start = time.perf_counter()
        outcome: str | None = None
        try:
            yield run
            outcome = run.outcome
        except kopf.TemporaryError:
            outcome = "retry"
            raise
        except Exception:
            outcome = "error"
            self.errors.labels("Unexpected").inc()
            raise
        finally:
            if outcome is not None:
                self.handled.labels(handler, outcome).inc()
                self.duration.labels(handler).observe(time.perf_counter() - start)

    def error(self, reason: str) -> None:
        """A problem a handler met (an API error, an unreachable Redis, ...)."""
        self.errors.labels(reason).inc()

    def projected_into_redis(self, namespace: str, name: str) -> None:
        """The operator wrote a generation of the policy into Redis."""
        self.projections.labels(namespace, name).inc()

    def observe(self, namespace: str, name: str, status: Mapping[str, Any], redis_up: bool) -> None:
        """The policy's gauges from its status document (as built by ``status.build_status``)."""
        key = (namespace, name)
        self.generation.labels(*key).set(status.get("observedGeneration") or 0)
        self.projected.labels(*key).set(status.get("projectedGeneration") or 0)
        self.instances.labels(*key).set(status.get("instanceCount") or 0)
        self.replicas.labels(*key).set(status.get("replicas") or 0)
        self.ready_replicas.labels(*key).set(status.get("readyReplicas") or 0)
        self.redis_up.labels(*key).set(1 if redis_up else 0)
        conditions = self._seen.setdefault(key, set())
        for c in status.get("conditions") or []:
            kind = str(c.get("type"))
            conditions.add(kind)
            for value in CONDITION_STATUSES:
                self.condition.labels(*key, kind, value).set(1 if c.get("status") == value else 0)
        self.policies.set(len(self._seen))

    def forget(self, namespace: str, name: str) -> None:
        """Remove the series of a deleted policy."""
        key = (namespace, name)
        for gauge in (
            self.projections,
            self.generation,
            self.projected,
            self.instances,
            self.replicas,
            self.ready_replicas,
            self.redis_up,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(*key)
        for kind in self._seen.pop(key, set()):
            for value in CONDITION_STATUSES:
                with contextlib.suppress(KeyError):
                    self.condition.remove(*key, kind, value)
        self.policies.set(len(self._seen))


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a host and a port number."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(address: str, registry: CollectorRegistry) -> web.AppRunner:
    """Serve ``GET /metrics`` from ``registry`` on ``address`` (``host:port``) until the returned
    runner is cleaned up."""
    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    runner = web.AppRunner(app, access_log=None)  # no log line per scrape
    await runner.setup()
    host, port = split_address(address)
    await web.TCPSite(runner, host, port).start()
    return runner
