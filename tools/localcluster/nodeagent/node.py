"""The Node object: registration, status (capacity, Ready) and the Lease heartbeat in kube-node-lease."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import uuid
from datetime import UTC, datetime
from typing import Any

from kubeapi import ApiError, KubeApi

log = logging.getLogger("node")

LEASE_SECONDS = 40
LEASE_RENEW_SECONDS = 10
STATUS_SECONDS = 60
# Taints the node lifecycle controller sets while a node is not Ready; removed once it is.
NOT_READY_TAINTS = {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def memory_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0


class NodeRegistration:
    def __init__(self, api: KubeApi, name: str, port: int, kubelet_version: str, max_pods: int = 110) -> None:
        self.api = api
        self.name = name
        self.port = port
        self.kubelet_version = kubelet_version
        self.max_pods = max_pods
        self.boot_id = str(uuid.uuid4())
        self.uid = ""

    def status(self) -> dict[str, Any]:
        cap = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{memory_kib()}Ki",
            "pods": str(self.max_pods),
            "ephemeral-storage": "100Gi",
        }
        t = now()

        def cond(type_: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": type_, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": t, "lastTransitionTime": t,
            }  # fmt: skip

        return {
            "capacity": cap,
            "allocatable": cap,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "local processes"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "local processes"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "local processes"),
                cond("Ready", "True", "KubeletReady", "node agent is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": self.boot_id.replace("-", ""),
                "systemUUID": self.boot_id,
                "bootID": self.boot_id,
                "kernelVersion": platform.release(),
                "osImage": "fleet-limiter local node (processes, no containers)",
                "containerRuntimeVersion": "localprocess://0.1.0",
                "kubeletVersion": self.kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), "amd64"),
            },
        }

    async def register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": self.status()["nodeInfo"]["architecture"],
            "node-role.kubernetes.io/local": "",
        }
        try:
            node = await self.api.post(
                "/api/v1/nodes",
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": labels}},
            )
            log.info("registered node %s", self.name)
        except ApiError as e:
            if e.status != 409:
                raise
            node = await self.api.get(f"/api/v1/nodes/{self.name}")
            log.info("node %s already registered", self.name)
        self.uid = node["metadata"]["uid"]
        await self.post_status()
        await self.renew_lease()
        await self.clear_not_ready_taints()

    async def post_status(self) -> None:
        await self.api.merge_patch(f"/api/v1/nodes/{self.name}/status", {"status": self.status()})

    async def clear_not_ready_taints(self) -> None:
        node = await self.api.get(f"/api/v1/nodes/{self.name}")
        taints = node.get("spec", {}).get("taints") or []
        kept = [t for t in taints if t["key"] not in NOT_READY_TAINTS]
        if len(kept) != len(taints):
            await self.api.merge_patch(f"/api/v1/nodes/{self.name}", {"spec": {"taints": kept or None}})
            log.info("removed not-ready taints from %s", self.name)

    async def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro_now()}
        try:
            await self.api.merge_patch(path, {"spec": spec})
        except ApiError as e:
            if e.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}
            await self.api.post(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {"metadata": {"name": self.name, "ownerReferences": [owner]}, "spec": spec},
            )

    async def heartbeat_forever(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(LEASE_RENEW_SECONDS)
            ticks += 1
            try:
                await self.renew_lease()
                if ticks % (STATUS_SECONDS // LEASE_RENEW_SECONDS) == 0:
                    await self.post_status()
                    await self.clear_not_ready_taints()
            except (TimeoutError, ApiError, OSError) as e:
                log.warning("node heartbeat failed: %s", e)
