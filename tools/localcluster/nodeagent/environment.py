"""A container's environment, resolved as the kubelet does: envFrom, then env in order (later wins), with
literal values, $(VAR) expansion, ConfigMap and Secret references and downward-API fields."""

from __future__ import annotations

import base64
import re
from typing import Any

from kubeapi import ApiError, KubeApi


class EnvError(Exception):
    """A reference that cannot be resolved (missing ConfigMap, Secret or key, not marked optional)."""


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are replaced, unknown ones kept, $$ escapes a $."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, value)


def field_value(path: str, pod: dict[str, Any], pod_ip: str) -> str:
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
    }
    if path in simple:
        return simple[path]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    raise EnvError(f"unsupported fieldRef {path!r}")


class EnvResolver:
    def __init__(self, api: KubeApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self._cache: dict[tuple[str, str], dict[str, str] | None] = {}

    async def _data(self, kind: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's or Secret's data as text, or None when it does not exist."""
        key = (kind, name)
        if key not in self._cache:
            path = f"/api/v1/namespaces/{self.namespace}/{kind}/{name}"
            try:
                obj = await self.api.get(path)
            except ApiError as e:
                if e.status != 404:
                    raise
                self._cache[key] = None
            else:
                data = dict(obj.get("data") or {})
                if kind == "secrets":
                    data = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()}
                else:
                    data.update(
                        {
                            k: base64.b64decode(v).decode("utf-8", "replace")
                            for k, v in (obj.get("binaryData") or {}).items()
                        }
                    )
                self._cache[key] = data
        return self._cache[key]

    async def _ref(self, kind: str, ref: dict[str, Any]) -> str | None:
        data = await self._data(kind, ref["name"])
        optional = bool(ref.get("optional"))
        what = "secret" if kind == "secrets" else "configmap"
        if data is None:
            if optional:
                return None
            raise EnvError(f'{what} "{ref["name"]}" not found')
        if ref["key"] not in data:
            if optional:
                return None
            raise EnvError(f"couldn't find key {ref['key']} in {what} {self.namespace}/{ref['name']}")
        return data[ref["key"]]

    async def resolve(
        self, container: dict[str, Any], pod: dict[str, Any], pod_ip: str, base: dict[str, str]
    ) -> dict[str, str]:
        self._cache.clear()
        env: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix", "")
            for kind, field in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
                if field in src:
                    ref = src[field]
                    data = await self._data(kind, ref["name"])
                    if data is None and not ref.get("optional"):
                        raise EnvError(f'{kind[:-1]} "{ref["name"]}" not found')
                    env.update({prefix + k: v for k, v in (data or {}).items()})
        for var in container.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = expand(var.get("value", ""), {**base, **env})
                continue
            vf = var["valueFrom"]
            value: str | None
            if "fieldRef" in vf:
                value = field_value(vf["fieldRef"]["fieldPath"], pod, pod_ip)
            elif "secretKeyRef" in vf:
                value = await self._ref("secrets", vf["secretKeyRef"])
            elif "configMapKeyRef" in vf:
                value = await self._ref("configmaps", vf["configMapKeyRef"])
            elif "resourceFieldRef" in vf:
                value = resource_value(vf["resourceFieldRef"], container)
            else:
                raise EnvError(f"unsupported valueFrom for {name}: {sorted(vf)}")
            if value is not None:
                env[name] = value
        return env


def resource_value(ref: dict[str, Any], container: dict[str, Any]) -> str:
    """requests.* / limits.* of the container (as written in its spec), or "0" when unset."""
    kind, _, resource = ref["resource"].partition(".")
    return str(((container.get("resources") or {}).get(kind) or {}).get(resource, "0"))
