"""The operator's settings, read from the environment in one place.

Every field names its variable; docs/operator.md lists them, and the Helm chart sets them from its
values. Durations are in seconds, Kubernetes quantities (``100m``, ``128Mi``) are passed through.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from limiter.core.env import EnvReader
from limiter.core.urls import redis_url_problem
from limiter.k8s.quantity import quantity

PREFIX = "FLEET_LIMITER_"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class SettingsError(ValueError):
    """A variable with a value the operator cannot use; the message names it."""


def is_namespace_name(name: str) -> bool:
    """Whether ``name`` is a valid namespace name (a DNS label)."""
    return bool(_NAME.match(name))


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """How the operator runs and what it puts into the limiter pods it creates."""

    namespaces: tuple[str, ...] = ()
    """Namespaces whose RateLimitPolicies the operator serves (``FLEET_LIMITER_OPERATOR_NAMESPACES``,
    comma-separated names). Empty (the default): every namespace, cluster-wide."""
    default_redis_url: str | None = None
    """Redis for policies without ``spec.redis`` (``FLEET_LIMITER_DEFAULT_REDIS_URL``). Without it,
    such a policy gets Ready=False, reason NoRedis."""
    status_interval_seconds: float = 5.0
    """How often each policy's status is refreshed from Redis and its Deployment, in seconds
    (``FLEET_LIMITER_OPERATOR_STATUS_INTERVAL``). A lost projection (Redis restarted empty) is also
    put back on this schedule."""
    limiter_image: str = "fleet-limiter:0.1.0"
    """Image of the limiter pods (``FLEET_LIMITER_LIMITER_IMAGE``); the Dockerfile's image."""
    limiter_image_pull_policy: str = "IfNotPresent"
    """``imagePullPolicy`` of the limiter pods (``FLEET_LIMITER_LIMITER_IMAGE_PULL_POLICY``)."""
    limiter_cpu_request: str = "100m"
    """CPU request of a limiter pod (``FLEET_LIMITER_LIMITER_CPU_REQUEST``)."""
    limiter_memory_request: str = "128Mi"
    """Memory request of a limiter pod (``FLEET_LIMITER_LIMITER_MEMORY_REQUEST``)."""
    limiter_cpu_limit: str | None = None
    """CPU limit of a limiter pod (``FLEET_LIMITER_LIMITER_CPU_LIMIT``); default none (no
    throttling of the heartbeat)."""
    limiter_memory_limit: str | None = "256Mi"
    """Memory limit of a limiter pod (``FLEET_LIMITER_LIMITER_MEMORY_LIMIT``; empty for none). The
    limiter uses 80% of it as its local memory budget when job types declare memory estimates and
    the policy sets no ``instance.memoryBudgetMB``."""
    termination_grace_seconds: int = 30
    """``terminationGracePeriodSeconds`` of the limiter pods
    (``FLEET_LIMITER_LIMITER_TERMINATION_GRACE_SECONDS``); in-flight leases get 5 s less to finish."""
    peering_name: str = "fleet-limiter"
    """The ClusterKopfPeering object replicas of this operator share (``FLEET_LIMITER_OPERATOR_PEERING``)."""
    peering_priority: int = field(default_factory=lambda: random.randint(1, 2**31 - 1))
    """This replica's peering priority (``FLEET_LIMITER_OPERATOR_PRIORITY``). Default: random, so that
    replicas never tie (kopf pauses every replica of a tie); the highest acts, the others wait."""
    standalone: bool = False
    """Run without peering (``FLEET_LIMITER_OPERATOR_STANDALONE=true``): only for a single replica
    or a development run outside the cluster; two standalone replicas would both act."""
    health_address: str | None = None
    """``host:port`` of kopf's liveness endpoint ``/healthz`` (``FLEET_LIMITER_OPERATOR_HEALTH_ADDRESS``);
    default none. The chart sets ``$(POD_IP):8081``."""
    metrics_address: str | None = None
    """``host:port`` of the operator's Prometheus metrics ``/metrics``
    (``FLEET_LIMITER_OPERATOR_METRICS_ADDRESS``); default none (not served). The chart sets
    ``$(POD_IP):8082``. Names and labels: docs/metrics.md."""
    delete_timeout_seconds: float = 300.0
    """How long deleting a policy retries removing its Redis keys while Redis is unreachable, in
    seconds (``FLEET_LIMITER_OPERATOR_DELETE_TIMEOUT``); after it the finalizer is released anyway
    (with a warning event) so that namespaces can still be deleted."""
    log_level: str = "INFO"
    """``FLEET_LIMITER_OPERATOR_LOG_LEVEL``: DEBUG, INFO, WARNING or ERROR."""

    @property
    def clusterwide(self) -> bool:
        """Whether the operator serves every namespace."""
        return not self.namespaces

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """Settings from ``FLEET_LIMITER_*`` variables; unset or empty variables keep the defaults."""
        read = EnvReader(os.environ if env is None else env, PREFIX, SettingsError)
        values: dict[str, object] = {}
        if raw := read.text("OPERATOR_NAMESPACES"):
            names = tuple(n.strip() for n in raw.split(",") if n.strip())
            for n in names:
                if not is_namespace_name(n):
                    raise SettingsError(
                        f"{PREFIX}OPERATOR_NAMESPACES: {n!r} is not a namespace name (exact names, "
                        "comma-separated; patterns are not supported)"
                    )
            values["namespaces"] = names
        if raw := read.text("DEFAULT_REDIS_URL"):
            if problem := redis_url_problem(raw):
                raise SettingsError(f"{PREFIX}DEFAULT_REDIS_URL: {problem}")
            values["default_redis_url"] = raw
        optional: dict[str, object | None] = {
            "status_interval_seconds": read.number("OPERATOR_STATUS_INTERVAL", positive=True),
            "delete_timeout_seconds": read.number("OPERATOR_DELETE_TIMEOUT", positive=True),
            "termination_grace_seconds": read.integer("LIMITER_TERMINATION_GRACE_SECONDS", positive=True),
            "peering_priority": read.integer("OPERATOR_PRIORITY"),
            "limiter_image": read.text("LIMITER_IMAGE"),
            "peering_name": read.text("OPERATOR_PEERING"),
            "limiter_image_pull_policy": read.choice(
                "LIMITER_IMAGE_PULL_POLICY", ("Always", "IfNotPresent", "Never")
            ),
            "standalone": read.boolean("OPERATOR_STANDALONE"),
            "log_level": read.choice("OPERATOR_LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), fold=True),
        }
        values.update({attr: value for attr, value in optional.items() if value is not None})
        for attr, name in (
            ("limiter_cpu_request", "LIMITER_CPU_REQUEST"),
            ("limiter_memory_request", "LIMITER_MEMORY_REQUEST"),
            ("limiter_cpu_limit", "LIMITER_CPU_LIMIT"),
            ("limiter_memory_limit", "LIMITER_MEMORY_LIMIT"),
        ):
            if read.is_set(name):
                raw = read.text(name)
                if raw and quantity(raw) is None:
                    raise SettingsError(
                        f"{PREFIX}{name}: {raw!r} is not a Kubernetes quantity (e.g. 100m, 128Mi)"
                    )
                if raw or attr.endswith("_limit"):  # an empty limit means "no limit"
                    values[attr] = raw
        for attr, name in (
            ("health_address", "OPERATOR_HEALTH_ADDRESS"),
            ("metrics_address", "OPERATOR_METRICS_ADDRESS"),
        ):
            if raw := read.text(name):
                host, _, port = raw.rpartition(":")
                if not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise SettingsError(f"{PREFIX}{name}: {raw!r} is not valid: host:port")
                values[attr] = raw
        if values.get("metrics_address") and values.get("metrics_address") == values.get("health_address"):
            raise SettingsError(
                f"{PREFIX}OPERATOR_METRICS_ADDRESS: {values['metrics_address']!r} is also the health "
                f"address ({PREFIX}OPERATOR_HEALTH_ADDRESS); give the metrics another port"
            )
        return cls(**values)  # type: ignore[arg-type]  # checked above, one variable at a time
