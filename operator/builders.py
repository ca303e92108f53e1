"""Pure builders: a RateLimitPolicy object in, the Kubernetes objects its fleet needs out.

No I/O and no kopf: the handlers read a body, call these, and apply the results. Everything the
operator owns for a policy is here: a ServiceAccount (no token mounted, no permissions), a
Deployment of limiter pods, a Service and a PodDisruptionBudget, all owned by the policy through
ownerReferences so that Kubernetes collects them when the policy goes.

The pod template never depends on the policy's content (limits, ratios, replicas): a new
generation reaches the pods through Redis and is applied live, so changing a limit never restarts
a pod. Only the image, the resources and the Redis URL are in the template.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from limiter.core.membership import project
from limiter.core.policy import (
    API_GROUP,
    API_VERSION,
    KIND,
    PolicySpec,
    RedisSettings,
    SecretKeyRef,
    upstream_key_env,
)
from limiter.core.policy import format_validation_error as _format

from .settings import OperatorSettings

MANAGER = "fleet-limiter-operator"
"""The field manager of every write, and the ``app.kubernetes.io/managed-by`` label."""
POLICY_LABEL = f"{API_GROUP}/policy"
PORT = 8080
PORT_NAME = "http"
CONTAINER = "limiter"
RUN_AS = 65532  # the Dockerfile's non-root user

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class NoRedis(ValueError):
    """Neither the policy nor the operator names a Redis."""


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """Which policy: what ownerReferences, names and labels are made of."""

    namespace: str
    name: str
    uid: str
    generation: int

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PolicyRef:
        """The reference of a RateLimitPolicy object as the API server returns it."""
        meta = body["metadata"]
        return cls(meta["namespace"], meta["name"], meta["uid"], int(meta.get("generation") or 1))


@dataclass(frozen=True, slots=True)
class ParsedPolicy:
    """A policy object, validated: ``spec`` when valid, else ``problems`` (one line per problem)."""

    ref: PolicyRef
    spec: PolicySpec | None
    problems: tuple[str, ...]
    model_names: tuple[str, ...]
    """The names under spec.models, read leniently (also for an invalid spec), for status.models."""
    redis: RedisSettings | None
    """spec.redis, read leniently: an invalid policy still reports on the Redis its fleet uses."""

    @property
    def valid(self) -> bool:
        """Whether the spec passed every rule of the model."""
        return self.spec is not None


def parse_policy(body: Mapping[str, Any]) -> ParsedPolicy:
    """Validate ``body.spec`` with the policy model: the rules the CRD schema cannot express
    (ratios summing to 1, references, estimates) are checked here."""
    ref = PolicyRef.from_body(body)
    raw = body.get("spec")
    raw = dict(raw) if isinstance(raw, Mapping) else {}
    models = raw.get("models")
    names = tuple(
        str(m["name"]) for m in models or [] if isinstance(m, Mapping) and isinstance(m.get("name"), str)
    ) if isinstance(models, list) else ()  # fmt: skip
    try:
        redis = RedisSettings.model_validate(raw["redis"]) if raw.get("redis") else None
    except ValidationError:
        redis = None
    try:
        spec = PolicySpec.model_validate(raw)
    except ValidationError as exc:
        return ParsedPolicy(ref, None, tuple(_format(exc)), names, redis)
    try:
        # The projection's own limit: pool parameters must be exact in Lua's doubles.
        project(projected_spec(spec))
    except ValueError as exc:
        return ParsedPolicy(ref, None, (str(exc),), names, redis)
    return ParsedPolicy(ref, spec, (), names, spec.redis)


# -- names and labels ----------------------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def child_name(policy_name: str) -> str:
    """The name of every object the operator owns for a policy: ``<policy>-limiter``.

    A Service name must be a DNS-1035 label (at most 63 characters, starting with a letter), which a
    policy name need not be: then a shortened, cleaned name with a hash of the full one is used.
    """
    plain = f"{policy_name}-limiter"
    if len(plain) <= 63 and _DNS1035.match(plain):
        return plain
    suffix = f"-{_digest(policy_name)}-limiter"
    clean = re.sub(r"[^a-z0-9-]+", "-", policy_name.lower()).strip("-")
    if not clean or not clean[0].isalpha():
        clean = f"rlp-{clean}".rstrip("-")
    return clean[: 63 - len(suffix)].rstrip("-") + suffix


def policy_label(policy_name: str) -> str:
    """The policy's name as a label value (at most 63 characters; longer names are shortened and
    hashed, so two long names never share pods)."""
    if len(policy_name) <= 63:
        return policy_name
    return policy_name[:54].rstrip("-.") + "-" + _digest(policy_name)


def selector_labels(policy_name: str) -> dict[str, str]:
    """The labels that select a policy's limiter pods (immutable in a Deployment: never change)."""
    return {
        "app.kubernetes.io/name": "fleet-limiter",
        "app.kubernetes.io/component": "limiter",
        POLICY_LABEL: policy_label(policy_name),
    }


def labels(policy_name: str) -> dict[str, str]:
    """The labels of every object the operator owns for a policy."""
    return {
        **selector_labels(policy_name),
        "app.kubernetes.io/instance": policy_label(policy_name),
        "app.kubernetes.io/part-of": "fleet-limiter",
        "app.kubernetes.io/managed-by": MANAGER,
    }


def owner_reference(policy: PolicyRef) -> dict[str, Any]:
    """The policy as the controlling owner: deleting it collects the object, and
    ``blockOwnerDeletion`` keeps a foreground deletion of the policy waiting for it."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": policy.name,
        "uid": policy.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(policy: PolicyRef) -> dict[str, Any]:
    return {
        "name": child_name(policy.name),
        "namespace": policy.namespace,
        "labels": labels(policy.name),
        "ownerReferences": [owner_reference(policy)],
    }


# -- Redis ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisSource:
    """Where a policy's Redis URL comes from: a literal URL or a key of a Secret."""

    url: str | None = None
    secret: SecretKeyRef | None = None

    def describe(self) -> str:
        """For messages: the Secret's name, or the URL without its password."""
        if self.secret is not None:
            return f"the URL in Secret {self.secret.name}, key {self.secret.key}"
        return redact(self.url or "")


def redis_source(redis: RedisSettings | None, settings: OperatorSettings) -> RedisSource:
    """spec.redis.secretRef, else spec.redis.url, else the operator's default; :class:`NoRedis`
    when there is none."""
    if redis is not None and redis.secret_ref is not None:
        return RedisSource(secret=redis.secret_ref)
    if redis is not None and redis.url:
        return RedisSource(url=redis.url)
    if settings.default_redis_url:
        return RedisSource(url=settings.default_redis_url)
    raise NoRedis(
        "no Redis: set spec.redis.url or spec.redis.secretRef, or give the operator a default "
        "(FLEET_LIMITER_DEFAULT_REDIS_URL; the chart's redis.url or redis.enabled)"
    )


def redact(url: str) -> str:
    """A Redis URL without its password, for messages and logs."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


def upstream_key_env_vars(spec: PolicySpec) -> list[dict[str, Any]]:
    """One variable per model whose upstream's API key is in a Secret (``apiKeySecretRef``), as a
    reference: the key never appears in the Deployment. The proxy reads the same names."""
    out = []
    for model in spec.models:
        ref = model.upstream.api_key_secret_ref if model.upstream else None
        if ref is not None:
            out.append(
                {
                    "name": upstream_key_env(model.name),
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
                }
            )
    return out


def redis_env(source: RedisSource) -> dict[str, Any]:
    """The FLEET_LIMITER_REDIS_URL variable of a limiter container: a Secret reference stays a
    reference (the URL and its password never appear in the Deployment)."""
    if source.secret is not None:
        return {
            "name": "FLEET_LIMITER_REDIS_URL",
            "valueFrom": {"secretKeyRef": {"name": source.secret.name, "key": source.secret.key}},
        }
    return {"name": "FLEET_LIMITER_REDIS_URL", "value": source.url or ""}


# -- the owned objects ------------------------------------------------------------------------------------


def build_service_account(policy: PolicyRef) -> dict[str, Any]:
    """The limiter pods' identity: no role is bound to it and no token is mounted (the pods talk
    to Redis only, never to the Kubernetes API)."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(policy),
        "automountServiceAccountToken": False,
    }


def _resources(settings: OperatorSettings) -> dict[str, Any]:
    resources: dict[str, Any] = {
        "requests": {"cpu": settings.limiter_cpu_request, "memory": settings.limiter_memory_request}
    }
    limits = {
        k: v for k, v in (("cpu", settings.limiter_cpu_limit), ("memory", settings.limiter_memory_limit)) if v
    }
    if limits:
        resources["limits"] = limits
    return resources


def build_deployment(
    policy: PolicyRef, spec: PolicySpec, source: RedisSource, settings: OperatorSettings
) -> dict[str, Any]:
    """The Deployment of ``spec.fleet.replicas`` limiter pods running ``fleet-limiter serve`` on the
    policy Redis holds for ``namespace/name``."""
    grace = settings.termination_grace_seconds
    container = {
        "name": CONTAINER,
        "image": settings.limiter_image,
        "imagePullPolicy": settings.limiter_image_pull_policy,
        "command": ["fleet-limiter", "serve", "--namespace", policy.namespace, "--name", policy.name],
        "env": [
            redis_env(source),
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            # The limiter listens on the pod's own address (FLEET_LIMITER_HOST defaults to POD_IP).
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "FLEET_LIMITER_PORT", "value": str(PORT)},
            *upstream_key_env_vars(spec),
            # In-flight leases get the grace period minus a margin to finish on SIGTERM.
            {"name": "FLEET_LIMITER_SHUTDOWN_GRACE_SECONDS", "value": str(max(1, grace - 5))},
        ],
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        # Unready while Redis is unreachable or the instance has not joined: no traffic then.
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": PORT_NAME},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        # /health answers as long as the process serves; a Redis outage never restarts a pod.
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": PORT_NAME},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "resources": _resources(settings),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(policy),
        "spec": {
            "replicas": spec.fleet.replicas,
            "selector": {"matchLabels": selector_labels(policy.name)},
            # A surge pod only divides capacity further (never over a limit); no pod is taken
            # away before its replacement is ready.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {"labels": labels(policy.name)},
                "spec": {
                    "serviceAccountName": child_name(policy.name),
                    "automountServiceAccountToken": False,
                    # Service links would inject *_PORT variables that could shadow FLEET_LIMITER_PORT.
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": grace,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                },
            },
        },
    }


def build_service(policy: PolicyRef) -> dict[str, Any]:
    """A ClusterIP Service over the ready limiter pods (the lease API, metrics)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(policy),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(policy.name),
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def build_pdb(policy: PolicyRef) -> dict[str, Any]:
    """At most one limiter pod evicted at a time. Unready pods (e.g. during a Redis outage) may
    always be evicted, so a node drain never waits for Redis."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(policy),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(policy.name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def build_children(
    policy: PolicyRef, spec: PolicySpec, source: RedisSource, settings: OperatorSettings
) -> list[dict[str, Any]]:
    """Every object the operator owns for a valid policy, in the order to apply them (the
    ServiceAccount before the pods that use it)."""
    return [
        build_service_account(policy),
        build_deployment(policy, spec, source, settings),
        build_service(policy),
        build_pdb(policy),
    ]


def projected_spec(spec: PolicySpec) -> dict[str, Any]:
    """The spec as the limiter pods read it from Redis: camelCase, defaults filled in, no nulls."""
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)
