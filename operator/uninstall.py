"""Uninstalling the operator without leaving anything stuck.

Every RateLimitPolicy carries the operator's finalizer ``fleetlimiter.io/finalizer``: deleting a
policy waits until the operator has stopped its pods and removed its Redis keys. An operator
uninstalled while policies exist leaves that finalizer with nobody to run it, and the policies'
namespaces then hang in Terminating. Two commands of ``fleet-limiter-operator`` prevent and repair that:

``check-uninstall``
    The chart's pre-delete hook: exits 0 when no policy is left in the namespaces the operator
    serves (``FLEET_LIMITER_OPERATOR_NAMESPACES``), so ``helm uninstall`` goes on; otherwise exits 1
    with the list of policies and the command that deletes them, and ``helm uninstall`` stops with
    the operator still running. Policies already being deleted are waited for (``--wait``): during a
    pre-delete hook the operator still runs and finishes them.
``release-finalizers``
    For when the operator is gone for good: removes the finalizer from every policy (of the given
    namespaces, or all), so that the policies and their namespaces can be deleted. Their Redis keys
    are left; the command prints the pattern they are found by.

The listing and the patches go through the official client (a short-lived command, so synchronous);
what to say and what to patch are the pure functions :func:`refusal` and :func:`finalizer_patch`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from limiter.core.policy import API_GROUP, API_VERSION
from limiter.k8s.crd import PLURAL

FINALIZER = f"{API_GROUP}/finalizer"
TIMEOUT = (5, 30)  # seconds: connect, read


class UninstallError(Exception):
    """The API server could not be reached or refused a request; the message says which."""


@dataclass(frozen=True, slots=True)
class PolicyItem:
    """What uninstalling needs to know of one RateLimitPolicy."""

    namespace: str
    name: str
    deleting: bool
    """It has a ``deletionTimestamp``: its finalizer is running (or waiting for an operator)."""
    finalizers: tuple[str, ...]

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> PolicyItem:
        meta = obj.get("metadata") or {}
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            deleting=bool(meta.get("deletionTimestamp")),
            finalizers=tuple(meta.get("finalizers") or ()),
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def refusal(policies: Sequence[PolicyItem], namespaces: Sequence[str]) -> str:
    """Why ``helm uninstall`` must wait, the policies in the way, and the command that removes them.

    ``namespaces`` are the namespaces the operator serves (empty: every namespace)."""
    count = len(policies)
    kind = "RateLimitPolicy still exists" if count == 1 else "RateLimitPolicies still exist"
    lines = [
        f"fleet-limiter-operator: refusing to uninstall: {count} {kind}; without the operator "
        "their finalizer would never run and their namespaces could not be deleted:"
    ]
    lines += [f"  {p.key}{' (being deleted)' if p.deleting else ''}" for p in sorted(policies, key=_order)]
    lines.append(
        "Delete them while the operator runs (it stops their pods and removes their Redis keys), "
        "then run helm uninstall again:"
    )
    if namespaces:
        lines += [f"  kubectl delete rlp --all -n {ns}" for ns in sorted({p.namespace for p in policies})]
    else:
        lines.append("  kubectl delete rlp --all --all-namespaces")
    return "\n".join(lines)


def finalizer_patch(finalizers: Sequence[str]) -> list[dict[str, Any]] | None:
    """A JSON patch that removes the operator's finalizer and keeps any other one, valid only while
    the list is still ``finalizers`` (its ``test`` fails otherwise); None when there is nothing to remove."""
    if FINALIZER not in finalizers:
        return None
    return [
        {"op": "test", "path": "/metadata/finalizers", "value": list(finalizers)},
        {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in finalizers if f != FINALIZER]},
    ]


def _order(p: PolicyItem) -> tuple[str, str]:
    return (p.namespace, p.name)


class Policies:
    """RateLimitPolicies through the official client, with the caller's credentials."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = client.CustomObjectsApi(api)

    @classmethod
    def connect(cls, kubeconfig: str | None = None) -> Policies:
        """In a pod, its service account; elsewhere ``kubeconfig``, ``$KUBECONFIG`` or ``~/.kube/config``
        (the local control plane's node agent hands pods a kubeconfig)."""
        try:
            if kubeconfig:
                config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            else:
                try:
                    config.load_incluster_config()  # type: ignore[no-untyped-call]
                except ConfigException:
                    config.load_kube_config()  # type: ignore[no-untyped-call]
        except (ConfigException, OSError) as exc:
            raise UninstallError(f"no Kubernetes credentials: {exc}") from None
        return cls(client.ApiClient())

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=TIMEOUT, **kwargs)
        except ApiException as exc:
            raise UninstallError(f"{what}: {exc.status} {exc.reason}: {_message(exc)}") from None
        except (HTTPError, OSError) as exc:
            raise UninstallError(f"{what}: the Kubernetes API did not answer: {exc}") from None

    def list(self, namespaces: Iterable[str]) -> list[PolicyItem]:
        """The policies of ``namespaces`` (empty: of every namespace)."""
        names = list(namespaces)
        if not names:
            found = self._call(
                "listing RateLimitPolicies",
                self._api.list_cluster_custom_object,
                API_GROUP,
                API_VERSION,
                PLURAL,
            )
            return [PolicyItem.from_object(o) for o in found.get("items", [])]
        items: list[PolicyItem] = []
        for ns in names:
            found = self._call(
                f"listing RateLimitPolicies in {ns}",
                self._api.list_namespaced_custom_object,
                API_GROUP,
                API_VERSION,
                ns,
                PLURAL,
            )
            items += [PolicyItem.from_object(o) for o in found.get("items", [])]
        return items

    def release(self, policy: PolicyItem, attempts: int = 5) -> bool:
        """Remove the operator's finalizer from one policy (read again when it changed meanwhile);
        False when it had none or is gone."""
        for _ in range(attempts):
            patch = finalizer_patch(policy.finalizers)
            if patch is None:
                return False
            try:
                self._api.patch_namespaced_custom_object(
                    API_GROUP, API_VERSION, policy.namespace, PLURAL, policy.name, patch,
                    _request_timeout=TIMEOUT, _content_type="application/json-patch+json",
                )  # fmt: skip
                return True
            except ApiException as exc:
                if exc.status == 404:
                    return False
                if exc.status != 422:  # 422: the test failed, the finalizers changed meanwhile
                    raise UninstallError(f"patching {policy.key}: {exc.status} {_message(exc)}") from None
            except (HTTPError, OSError) as exc:
                raise UninstallError(
                    f"patching {policy.key}: the Kubernetes API did not answer: {exc}"
                ) from None
            obj = self._call(
                f"reading {policy.key}",
                self._api.get_namespaced_custom_object,
                API_GROUP,
                API_VERSION,
                policy.namespace,
                PLURAL,
                policy.name,
            )
            policy = PolicyItem.from_object(obj)
        raise UninstallError(f"{policy.key}: its finalizers kept changing; is an operator still running?")


def check_uninstall(
    policies: Policies,
    namespaces: Sequence[str],
    wait_seconds: float,
    say: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """0 when no policy is left in ``namespaces`` (empty: all); waits up to ``wait_seconds`` while every
    one left is being deleted; otherwise says :func:`refusal` and returns 1."""
    deadline = clock() + wait_seconds
    left = policies.list(namespaces)
    while left and all(p.deleting for p in left) and clock() < deadline:
        sleep(1.0)
        left = policies.list(namespaces)
    if not left:
        where = ", ".join(namespaces) if namespaces else "any namespace"
        say(f"fleet-limiter-operator: no RateLimitPolicy left in {where}: the operator can be uninstalled")
        return 0
    say(refusal(left, namespaces))
    return 1


def release_finalizers(policies: Policies, namespaces: Sequence[str], say: Callable[[str], None]) -> int:
    """Remove the operator's finalizer from every policy of ``namespaces`` (empty: all); 0."""
    released = [p for p in sorted(policies.list(namespaces), key=_order) if policies.release(p)]
    for p in released:
        note = " (its deletion now completes)" if p.deleting else ""
        say(f"released {p.key}{note}; its Redis keys, if any, are left: fl:{{{p.key}}}:*")
    if not released:
        say(f"no RateLimitPolicy carries the {FINALIZER} finalizer")
    return 0


def _message(exc: ApiException) -> str:
    """The API server's own message (a Status object), else the HTTP reason."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)
