"""The operator's Kubernetes adapter: read an object, apply one only when it differs, delete one.

Writes are server-side applies with the operator's field manager (``force``: the operator owns
the fields it sets), sent only when :func:`limiter_operator.diffs.differences` finds a change:
an unchanged fleet is never written to. The official client is synchronous; calls run in a
worker thread so the kopf event loop never blocks.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from .builders import MANAGER
from .diffs import differences

#: Plural resource names of the kinds the operator touches.
PLURALS = {
    "ServiceAccount": "serviceaccounts",
    "Service": "services",
    "Secret": "secrets",
    "Deployment": "deployments",
    "PodDisruptionBudget": "poddisruptionbudgets",
}
TIMEOUT = (5, 30)  # seconds: connect, read


class KubeError(Exception):
    """A request the API server refused; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class NotOwned(Exception):
    """An object with the name the operator needs exists and belongs to someone else."""


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    """The REST path of a namespaced object (or of its collection when ``name`` is None)."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


@dataclass(frozen=True, slots=True)
class Applied:
    """What :meth:`Kube.apply` did."""

    action: str
    """created, updated or unchanged."""
    obj: dict[str, Any]
    """The object as the API server has it now."""
    changes: list[str]
    """For an update, the fields that differed (``path: old -> new``)."""


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether ``obj`` has an ownerReference to the object with ``uid``."""
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


class Kube:
    """Namespaced gets, applies and deletes with the operator's own credentials."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    @classmethod
    def from_environment(cls) -> Kube:
        """In a pod, its service account; elsewhere (or on the local node agent, which hands pods a
        kubeconfig), ``$KUBECONFIG`` or ``~/.kube/config``."""
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        return cls(client.ApiClient())

    def close(self) -> None:
        """Release the connection pool."""
        self._api.close()  # type: ignore[no-untyped-call]

    def _call(
        self, method: str, path: str, body: Any, query: list[tuple[str, str]], content_type: str
    ) -> dict[str, Any] | None:
        try:
            method, url, headers, body, _ = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=query,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(
                method, url, header_params=headers, body=body, _request_timeout=TIMEOUT
            )
            data = response.read()  # type: ignore[no-untyped-call]
        except (ApiException, OSError) as exc:  # no answer: urllib3's errors are OSErrors
            raise KubeError(0, f"{method} {path}: {exc}") from None
        if response.status == 404:
            return None
        if response.status >= 400:
            raise KubeError(response.status, f"{method} {path}: {_message(data, response.reason)}")
        return json.loads(data) if data else {}

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        """One request in a worker thread; None when the object does not exist (404)."""
        return await asyncio.to_thread(self._call, method, path, body, query or [], content_type)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        return await self._request("GET", object_path(api_version, kind, namespace, name))

    async def apply(self, obj: Mapping[str, Any], owner_uid: str) -> Applied:
        """Make the object in the cluster carry every field of ``obj``: created when missing,
        server-side applied when a field differs, left alone otherwise. Refuses (:class:`NotOwned`)
        to take over an object of that name that ``owner_uid`` does not own."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        existing = await self._request("GET", path)
        if existing is not None:
            if not owned_by(existing, owner_uid):
                raise NotOwned(
                    f"{obj['kind']} {meta['namespace']}/{meta['name']} exists and is not owned by this "
                    "policy; rename or delete it"
                )
            changes = differences(obj, existing)
            if not changes:
                return Applied("unchanged", existing, [])
        else:
            changes = []
        result = await self._request(
            "PATCH",
            path,
            dict(obj),
            [("fieldManager", MANAGER), ("force", "true")],
            "application/apply-patch+yaml",
        )
        if result is None:  # the namespace is going away under us
            raise KubeError(404, f"{obj['kind']} {meta['namespace']}/{meta['name']}: namespace not found")
        return Applied("created" if existing is None else "updated", result, changes)

    async def delete(
        self, api_version: str, kind: str, namespace: str, name: str, *, propagation: str = "Foreground"
    ) -> bool:
        """Delete the object (``Foreground``: it disappears only after its dependents, e.g. a
        Deployment after its pods); False when it did not exist."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        result = await self._request("DELETE", object_path(api_version, kind, namespace, name), body)
        return result is not None

    async def secret_value(self, namespace: str, name: str, key: str) -> str:
        """One key of a Secret, decoded; :class:`KubeError` (404) when the Secret or the key is missing."""
        secret = await self.get("v1", "Secret", namespace, name)
        if secret is None:
            raise KubeError(404, f"Secret {namespace}/{name} not found")
        data = secret.get("data") or {}
        if key not in data:
            raise KubeError(404, f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data[key]).decode("utf-8").strip()


def _message(data: bytes | None, reason: str | None) -> str:
    """The API server's own message (a Status object), else the HTTP reason."""
    try:
        return str(json.loads(data or b"{}").get("message") or reason)
    except (ValueError, AttributeError):
        return str(reason)
