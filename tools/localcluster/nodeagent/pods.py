"""One pod on the local node: its containers run as local processes, each in its own process group.

A PodWorker owns one pod (by uid): it gives it an address, hands its processes a kubeconfig with a
TokenRequest token of the pod's service account, starts and restarts containers by restartPolicy with
backoff, runs probes, reports status, and on deletion stops the processes (SIGTERM, grace, SIGKILL)
and completes the deletion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from environment import EnvError, EnvResolver, expand
from kubeapi import ApiError
from probes import probe

if TYPE_CHECKING:
    from main import Agent

log = logging.getLogger("pods")

BACKOFF_START, BACKOFF_MAX = 2.0, 60.0  # seconds; kubelet uses 10 s and 300 s
BACKOFF_RESET_AFTER = 60.0  # a container that ran this long restarts without delay
TOKEN_SECONDS = 24 * 3600
OWN_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    spec: dict[str, Any]
    init: bool = False
    restart_count: int = 0
    proc: asyncio.subprocess.Process | None = None
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    done: bool = False  # terminated and will not be restarted
    liveness_failed: bool = False
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self) -> dict[str, Any]:
        image = self.spec.get("image", "")
        st: dict[str, Any] = {
            "name": self.name,
            "image": image,
            "imageID": f"local://{image}",  # recorded, never pulled
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.proc is not None:
            st["containerID"] = f"localprocess://{self.proc.pid}"
        return st


class PodWorker:
    def __init__(self, agent: Agent, pod: dict[str, Any]) -> None:
        self.agent = agent
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        spec = pod["spec"]
        self.init_containers = [Container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c) for c in spec.get("containers") or []]
        self.ip: str | None = None
        self.start_time: str | None = None
        self.initialized = False
        self.stopping = False
        self.finished = asyncio.Event()  # the pod's processes are gone and the worker is done
        self.dirty = asyncio.Event()
        self.transitions: dict[str, tuple[str, str]] = {}
        self.dir = agent.state_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.log_dir = agent.state_dir / "logs" / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.tasks: list[asyncio.Task[Any]] = []
        self.resolver = EnvResolver(agent.api, self.namespace)

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def start(self) -> None:
        self.tasks.append(asyncio.create_task(self._run(), name=f"pod {self.key}"))
        self.tasks.append(asyncio.create_task(self._publish_forever(), name=f"status {self.key}"))

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.stopping:
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            log.info("pod %s is being deleted (grace %ss)", self.key, grace)
            self.agent.spawn(self.terminate(float(grace), delete=True))

    async def _run(self) -> None:
        self.ip = self.agent.addresses.allocate(self.key)
        self.start_time = now()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log.info("pod %s starting with address %s", self.key, self.ip)
        self.mark()
        await self._write_kubeconfig_until_ok()
        if self.stopping:
            return
        self.tasks.append(asyncio.create_task(self._refresh_token_forever()))
        for c in self.init_containers:
            await self._supervise(c)
            if self.stopping or c.state.get("terminated", {}).get("exitCode") != 0:
                self.mark()
                return  # a failed init container with restartPolicy Never fails the pod
        self.initialized = True
        self.mark()
        await asyncio.gather(*(self._supervise(c) for c in self.containers))
        self.mark()

    async def terminate(self, grace: float, delete: bool) -> None:
        """Stops every process: SIGTERM, up to `grace` seconds, SIGKILL (at once when `grace` is 0).
        Then completes the deletion."""
        if self.stopping:
            return
        self.stopping = True
        procs = [
            c.proc for c in self.init_containers + self.containers if c.proc and c.proc.returncode is None
        ]
        # A grace period of 0 (a forced delete) kills at once: a SIGTERM first would let the process
        # run its shutdown, which is exactly what a forced delete must not allow.
        for p in procs if grace > 0 else []:
            _signal_group(p.pid, signal.SIGTERM)
        if procs and grace > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), grace)
        for p in procs:
            _signal_group(p.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await p.wait()
        await self._cleanup()
        if delete:
            with contextlib.suppress(ApiError):
                await self.agent.api.delete(
                    f"/api/v1/namespaces/{self.namespace}/pods/{self.name}",
                    {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
                )
            log.info("pod %s deleted", self.key)

    async def kill_now(self) -> None:
        """The pod object is gone (a forced delete): SIGKILL at once."""
        log.info("pod %s was removed from the API: killing its processes", self.key)
        await self.terminate(0.0, delete=False)

    async def _cleanup(self) -> None:
        for t in self.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        self.agent.addresses.free(self.ip)
        # the pod's kubeconfig and token go with it (its logs stay, under logs/pods/)
        shutil.rmtree(self.dir, ignore_errors=True)
        for c in self.init_containers + self.containers:
            self.agent.forget_pid(self.uid, c.name)
        self.finished.set()
        self.agent.workers.pop(self.uid, None)

    # --- containers ----------------------------------------------------------------------------

    def _restart(self, c: Container, exit_code: int) -> bool:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if c.init:
            return exit_code != 0 and policy != "Never"
        return policy == "Always" or (policy == "OnFailure" and exit_code != 0)

    async def _supervise(self, c: Container) -> None:
        backoff = BACKOFF_START
        while not self.stopping:
            try:
                argv, env = await self._command(c)
            except EnvError as e:
                c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
                self.mark()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            started = time.monotonic()
            rc = await self._run_process(c, argv, env)
            if self.stopping:
                break
            if not self._restart(c, rc):
                c.done = True
                self.mark()
                break
            if time.monotonic() - started > BACKOFF_RESET_AFTER:
                backoff = BACKOFF_START
            c.last_state = c.state
            c.restart_count += 1
            message = f"back-off {backoff:.0f}s restarting failed container"
            c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
            self.mark()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _command(self, c: Container) -> tuple[list[str], dict[str, str]]:
        base = self.agent.base_env(self)
        env = {**base, **await self.resolver.resolve(c.spec, self.pod, self.ip or "", base)}
        command = [expand(a, env) for a in c.spec.get("command") or []]
        args = [expand(a, env) for a in c.spec.get("args") or []]
        if not command:
            raise EnvError(
                f"container {c.name!r} has no command: image entrypoints are not run on the local node "
                f"(image {c.spec.get('image')!r} is only recorded), so set `command`"
            )
        return command + args, env

    async def _run_process(self, c: Container, argv: list[str], env: dict[str, str]) -> int:
        logfile = self.log_dir / c.name / f"{c.restart_count}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        cwd = c.spec.get("workingDir") or ""
        if not cwd or not _is_dir(cwd):
            cwd = str(self.dir)  # an image's workingDir (/app, ...) rarely exists on this machine
        c.env = env
        try:
            with logfile.open("ab") as out:
                c.proc = await asyncio.create_subprocess_exec(
                    *argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
        except OSError as e:
            c.proc = None
            with logfile.open("a") as out:
                out.write(f"failed to start {argv!r}: {e}\n")
            c.state = {"terminated": {"exitCode": 128, "reason": "StartError", "message": str(e),
                                      "startedAt": now(), "finishedAt": now()}}  # fmt: skip
            self.mark()
            return 128
        self.agent.remember_pid(self.uid, c.name, c.proc.pid)
        started_at = now()
        c.state = {"running": {"startedAt": started_at}}
        c.started = True
        c.liveness_failed = False
        c.ready = not c.init and "readinessProbe" not in c.spec
        self.mark()
        probes = []
        if not c.init:
            if "readinessProbe" in c.spec:
                probes.append(asyncio.create_task(self._probe_loop(c, "readinessProbe")))
            if "livenessProbe" in c.spec:
                probes.append(asyncio.create_task(self._probe_loop(c, "livenessProbe")))
        rc = await c.proc.wait()
        for t in probes:
            t.cancel()
        self.agent.forget_pid(self.uid, c.name)
        code = 128 - rc if rc < 0 else rc  # killed by signal n -> 128+n, as a container runtime reports
        reason = "Completed" if code == 0 else "Error"
        term: dict[str, Any] = {
            "exitCode": code,
            "reason": reason,
            "startedAt": started_at,
            "finishedAt": now(),
            "containerID": f"localprocess://{c.proc.pid}",
        }
        if c.liveness_failed:
            term["message"] = "container failed its liveness probe and was restarted"
        c.state = {"terminated": term}
        c.ready = False
        self.mark()
        log.info("pod %s container %s exited with %s", self.key, c.name, code)
        return code

    async def _probe_loop(self, c: Container, kind: str) -> None:
        spec = c.spec[kind]
        period = float(spec.get("periodSeconds") or 10)
        success_needed = int(spec.get("successThreshold") or 1)
        failure_needed = int(spec.get("failureThreshold") or 3)
        await asyncio.sleep(float(spec.get("initialDelaySeconds") or 0))
        successes = failures = 0
        while c.proc is not None and c.proc.returncode is None:
            ok = await probe(spec, c.spec, self.ip or "127.0.0.1", c.env)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if kind == "readinessProbe":
                if ok and successes >= success_needed and not c.ready:
                    c.ready = True
                    self.mark()
                elif not ok and failures >= failure_needed and c.ready:
                    c.ready = False
                    self.mark()
            elif not ok and failures >= failure_needed:
                log.info("pod %s container %s failed its liveness probe: restarting", self.key, c.name)
                c.liveness_failed = True
                grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
                await _stop_group(c.proc, grace)
                return
            await asyncio.sleep(period)

    # --- service account -----------------------------------------------------------------------

    def kubeconfig_path(self) -> Path | None:
        if self.pod["spec"].get("automountServiceAccountToken") is False:
            return None
        return self.dir / "kubeconfig"

    async def _write_kubeconfig_until_ok(self) -> None:
        delay = 0.5
        while not self.stopping:
            try:
                await self._write_kubeconfig()
                return
            except (ApiError, OSError) as e:
                log.warning("pod %s: token request failed (%s); retrying", self.key, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def _write_kubeconfig(self) -> None:
        path = self.kubeconfig_path()
        if path is None:
            return
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        req = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": TOKEN_SECONDS,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            },
        }
        resp = await self.agent.api.post(
            f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{sa}/token", req
        )
        token = resp["status"]["token"]
        ca = self.agent.ca_text
        sa_dir = self.dir / "serviceaccount"  # the files a pod finds in /var/run/secrets/kubernetes.io/...
        sa_dir.mkdir(parents=True, exist_ok=True)
        for name, text in (("token", token), ("ca.crt", ca), ("namespace", self.namespace)):
            _write_private(sa_dir / name, text)
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": self.agent.api.server,
                                                       "certificate-authority": str(sa_dir / "ca.crt")}}],
            "users": [{"name": sa, "user": {"tokenFile": str(sa_dir / "token")}}],
            "contexts": [{"name": "local",
                          "context": {"cluster": "local", "user": sa, "namespace": self.namespace}}],
            "current-context": "local",
        }  # fmt: skip
        _write_private(path, json.dumps(cfg, indent=2) + "\n")

    async def _refresh_token_forever(self) -> None:
        while True:
            await asyncio.sleep(TOKEN_SECONDS / 4)
            await self._write_kubeconfig_until_ok()

    # --- status --------------------------------------------------------------------------------

    def mark(self) -> None:
        self.dirty.set()

    def phase(self) -> str:
        if not self.initialized:
            if any(
                c.done and c.state.get("terminated", {}).get("exitCode") != 0 for c in self.init_containers
            ):
                return "Failed"
            return "Pending"
        if not all(c.started for c in self.containers):
            return "Pending"
        if all(c.done for c in self.containers):
            codes = [c.state.get("terminated", {}).get("exitCode", 1) for c in self.containers]
            return "Succeeded" if all(code == 0 for code in codes) else "Failed"
        return "Running"

    def _condition(self, type_: str, ok: bool, reason: str = "") -> dict[str, Any]:
        status = "True" if ok else "False"
        prev = self.transitions.get(type_)
        if prev is None or prev[0] != status:
            self.transitions[type_] = (status, now())
        cond = {"type": type_, "status": status, "lastProbeTime": None,
                "lastTransitionTime": self.transitions[type_][1]}  # fmt: skip
        if reason and not ok:
            cond["reason"] = reason
        return cond

    def status(self) -> dict[str, Any]:
        phase = self.phase()
        ready = bool(self.containers) and all(c.ready for c in self.containers) and phase == "Running"
        conditions = [
            self._condition("PodReadyToStartContainers", self.ip is not None),
            self._condition("Initialized", self.initialized, "ContainersNotInitialized"),
            self._condition("ContainersReady", ready, "ContainersNotReady"),
            self._condition("Ready", ready, "ContainersNotReady"),
            self._condition("PodScheduled", True),
        ]
        others = [
            c for c in self.pod.get("status", {}).get("conditions") or [] if c["type"] not in OWN_CONDITIONS
        ]
        st: dict[str, Any] = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "conditions": conditions + others,
            "containerStatuses": [c.status() for c in self.containers],
        }
        if self.init_containers:
            st["initContainerStatuses"] = [c.status() for c in self.init_containers]
        if self.ip:
            st["podIP"] = self.ip
            st["podIPs"] = [{"ip": self.ip}]
        return st

    async def _publish_forever(self) -> None:
        last: dict[str, Any] | None = None
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            status = self.status()
            if status == last:
                continue
            try:
                await self.agent.api.merge_patch(
                    f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status", {"status": status}
                )
                last = status
            except ApiError as e:
                if e.status == 404:
                    return
                log.warning("pod %s: status update failed: %s", self.key, e)
                await asyncio.sleep(1)
                self.mark()
            except (TimeoutError, OSError) as e:
                log.warning("pod %s: status update failed: %s", self.key, e)
                await asyncio.sleep(1)
                self.mark()
            await asyncio.sleep(0.1)  # coalesce bursts of changes


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _stop_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    _signal_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(proc.wait(), grace)
    _signal_group(proc.pid, signal.SIGKILL)
