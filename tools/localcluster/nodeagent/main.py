"""The local node agent: a kubelet stand-in that runs pods as local processes (tools/localcluster/README.md).

It registers a Node, renews its Lease, watches the pods bound to it and runs one PodWorker per pod.
It also serves `kubectl logs` (GET /containerLogs/...) on its kubelet port, over TLS, for the API server.
On SIGTERM it stops every pod process and exits; the pod objects stay, and a restarted agent runs them again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from addresses import AddressPool
from kubeapi import ApiError, KubeApi
from logserver import start_log_server
from node import NodeRegistration
from pods import PodWorker

log = logging.getLogger("agent")


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.node_name: str = args.node_name
        self.state_dir = Path(args.state_dir)
        self.api = KubeApi(args.server, args.ca_file, args.cert_file, args.key_file)
        self.addresses = AddressPool()
        self.workers: dict[str, PodWorker] = {}
        self.pid_dir = self.state_dir / "run" / "pods"
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.ca_text = Path(args.ca_file).read_text()
        self._background: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any) -> None:
        """Runs coro in the background, holding a reference so the task is not garbage-collected."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- what every pod process gets -----------------------------------------------------------

    def base_env(self, worker: PodWorker) -> dict[str, str]:
        """The environment a container starts from, before its own env: the project's virtualenv first on
        PATH, the pod's kubeconfig, and this cluster's tag (so `cluster-down` can find strays). Nothing of
        the agent's own environment (its credentials above all) leaks into pods."""
        path = [self.args.venv_bin, *(self.args.tools_bin or []), "/usr/local/bin", "/usr/bin", "/bin"]
        env = {
            "PATH": ":".join(path),
            "HOME": str(worker.dir),
            "HOSTNAME": worker.name,
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "VIRTUAL_ENV": str(Path(self.args.venv_bin).parent),
            "FLEET_LOCALCLUSTER": os.environ.get("FLEET_LOCALCLUSTER", str(self.state_dir)),
        }
        kubeconfig = worker.kubeconfig_path()
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        return env

    def remember_pid(self, uid: str, container: str, pid: int) -> None:
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        (self.pid_dir / f"{uid[:8]}-{container}.pid").write_text(f"{pid} {start}\n")

    def forget_pid(self, uid: str, container: str) -> None:
        (self.pid_dir / f"{uid[:8]}-{container}.pid").unlink(missing_ok=True)

    # --- the pod watch -------------------------------------------------------------------------

    def on_pod(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if worker is None:
            if pod["metadata"].get("deletionTimestamp"):
                # being deleted and not running here (already stopped, or the agent restarted)
                self.spawn(self._delete_now(pod))
                return
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                return  # finished before this agent started: never run a pod twice
            worker = PodWorker(self, pod)
            self.workers[uid] = worker
            worker.start()
        worker.update(pod)

    async def _delete_now(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):
            await self.api.delete(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )

    def on_pod_gone(self, uid: str) -> None:
        worker = self.workers.get(uid)
        if worker is not None and not worker.stopping:
            self.spawn(worker.kill_now())

    async def watch_pods_forever(self) -> None:
        path = "/api/v1/pods"
        selector = f"spec.nodeName={self.node_name}"
        while True:
            try:
                listing = await self.api.get(path, fieldSelector=selector)
                seen = set()
                for pod in listing.get("items") or []:
                    seen.add(pod["metadata"]["uid"])
                    self.on_pod(pod)
                for uid in list(self.workers):
                    if uid not in seen:
                        self.on_pod_gone(uid)
                rv = listing["metadata"]["resourceVersion"]
                while True:
                    async for event in self.api.watch(path, fieldSelector=selector, resourceVersion=rv):
                        kind, obj = event["type"], event["object"]
                        if kind == "ERROR":
                            raise ApiError(obj.get("code", 500), "WATCH", path, obj.get("message", ""))
                        rv = obj["metadata"]["resourceVersion"]
                        if kind in ("ADDED", "MODIFIED"):
                            self.on_pod(obj)
                        elif kind == "DELETED":
                            self.on_pod_gone(obj["metadata"]["uid"])
            except ApiError as e:
                if e.status != 410:
                    log.warning("pod watch failed: %s", e)
                    await asyncio.sleep(1)
            except (TimeoutError, OSError, ValueError) as e:
                log.warning("pod watch failed: %s", e)
                await asyncio.sleep(1)

    async def shutdown(self) -> None:
        log.info("stopping %d pods", len(self.workers))
        workers = list(self.workers.values())
        grace = [min(5.0, float(w.pod["spec"].get("terminationGracePeriodSeconds", 30))) for w in workers]
        await asyncio.gather(*(w.terminate(g, delete=False) for w, g in zip(workers, grace, strict=True)))
        await self.api.close()


async def run(args: argparse.Namespace) -> None:
    agent = Agent(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node = NodeRegistration(agent.api, agent.node_name, args.port, args.kubelet_version)
    while True:
        try:
            await node.register()
            break
        except (ApiError, OSError) as e:
            log.warning("node registration failed (%s); retrying", e)
            await asyncio.sleep(1)
    runner = await start_log_server(agent, args)
    tasks = [asyncio.create_task(node.heartbeat_forever()), asyncio.create_task(agent.watch_pods_forever())]
    log.info("node %s ready; pods run as local processes", agent.node_name)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await agent.shutdown()
    await runner.cleanup()


def main() -> int:
    p = argparse.ArgumentParser(description="local node agent")
    p.add_argument("--node-name", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--ca-file", required=True)
    p.add_argument("--cert-file", required=True)
    p.add_argument("--key-file", required=True)
    p.add_argument("--serving-cert-file", required=True)
    p.add_argument("--serving-key-file", required=True)
    p.add_argument("--port", type=int, required=True, help="kubelet port, for `kubectl logs`")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--kubelet-version", required=True)
    p.add_argument("--venv-bin", required=True, help="first on every pod's PATH")
    p.add_argument("--tools-bin", action="append", help="also on every pod's PATH (kubectl, helm)")
    args = p.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
