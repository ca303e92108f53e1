"""Where the e2e suite runs and how it reaches things: the cluster, its tools, the pods and Redis.

Two kinds of cluster, chosen by ``FLEET_E2E_CLUSTER`` (docs/e2e.md):

``local`` (the default)
    The project's local control plane (tools/localcluster), brought up by the session fixture of
    tests/cluster. kubectl and helm come from its build cache, the admin kubeconfig is
    ``.cluster/kubeconfig``. Pods are local processes with loopback pod IPs (127.10.x.y), so the
    suite talks to them directly; the fleets' Redis is a private ``redis-server`` on 127.0.0.1,
    given to the chart as ``redis.url`` (there is no DNS for the in-chart Redis's Service).
``kubeconfig``
    Whatever cluster ``$KUBECONFIG`` points to (kind, through tools/kind/e2e.sh), kubectl and helm
    from PATH. Pod IPs are not reachable from the host there, so pods are reached through the API
    server's pod proxy (one ``kubectl proxy`` on 127.0.0.1) and the chart's in-chart Redis through
    ``kubectl port-forward`` to its Service. ``kubectl port-forward`` cannot reach a limiter pod: the
    kubelet's forwarder dials ``localhost`` inside the pod, and the limiter listens on the pod's IP
    only (``POD_IP``), so every connection is refused and kubectl exits ("lost connection to pod").

The default never touches a user's own cluster: ``make test`` runs on the local control plane even
when ``KUBECONFIG`` is set; another cluster is an explicit opt-in.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.cluster.conftest import Cluster
from tests.support.redis_server import RedisServer, send_command

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "fleet-limiter"
#: Port of the limiter's HTTP API in every pod.
LIMITER_PORT = 8080
#: Label of every namespace the suite creates, so a later run can sweep up an interrupted one.
E2E_LABEL = "fleet-limiter-e2e"


class E2EConfigError(ValueError):
    """An environment variable of the suite has a value it cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    """The suite's settings, from ``FLEET_E2E_*`` environment variables."""

    cluster: str = "local"
    """``local`` (the project's control plane) or ``kubeconfig`` (``$KUBECONFIG`` as it is)."""
    pod_access: str = "direct"
    """``direct`` (pod IPs, loopback only) or ``api-proxy`` (the API server's pod proxy, through one
    ``kubectl proxy`` on 127.0.0.1)."""
    image: str = "fleet-limiter:e2e"
    """Image (repository:tag) the chart runs in ``kubeconfig`` mode; the local node never pulls."""
    scale_pods: int = 50
    """Pods of the scale scenario."""
    redis_image: str = ""
    """Image (repository:tag) of the chart's in-chart Redis in ``kubeconfig`` mode; empty: the chart's
    default (tools/kind/e2e.sh names the one it builds from Debian's redis-server)."""
    containers: bool = False
    """Run the scenarios only real containers can show (marked ``containers``: node containers stopped
    and killed with ``docker``, cgroup memory limits, the in-chart Redis on its volume); without it
    they are deselected. ``FLEET_E2E_CONTAINERS=1`` (tools/kind/e2e.sh) needs ``kubeconfig``."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read and check ``FLEET_E2E_CLUSTER``, ``FLEET_E2E_POD_ACCESS``, ``FLEET_E2E_IMAGE``,
        ``FLEET_E2E_SCALE_PODS``, ``FLEET_E2E_REDIS_IMAGE`` and ``FLEET_E2E_CONTAINERS``."""
        env = dict(os.environ if env is None else env)
        cluster = env.get("FLEET_E2E_CLUSTER", "local")
        if cluster not in ("local", "kubeconfig"):
            raise E2EConfigError(f"FLEET_E2E_CLUSTER: {cluster!r} is not valid: local or kubeconfig")
        access = env.get("FLEET_E2E_POD_ACCESS", "direct" if cluster == "local" else "api-proxy")
        if access not in ("direct", "api-proxy"):
            raise E2EConfigError(f"FLEET_E2E_POD_ACCESS: {access!r} is not valid: direct or api-proxy")
        image = env.get("FLEET_E2E_IMAGE", cls.image)
        if ":" not in image.rsplit("/", 1)[-1]:
            raise E2EConfigError(f"FLEET_E2E_IMAGE: {image!r} is not valid: expected repository:tag")
        raw = env.get("FLEET_E2E_SCALE_PODS", str(cls.scale_pods))
        if not raw.isdigit() or not 2 <= int(raw) <= 200:
            raise E2EConfigError(f"FLEET_E2E_SCALE_PODS: {raw!r} is not valid: a whole number from 2 to 200")
        redis_image = env.get("FLEET_E2E_REDIS_IMAGE", cls.redis_image)
        if redis_image and ":" not in redis_image.rsplit("/", 1)[-1]:
            raise E2EConfigError(
                f"FLEET_E2E_REDIS_IMAGE: {redis_image!r} is not valid: expected repository:tag"
            )
        containers = env.get("FLEET_E2E_CONTAINERS", "0")
        if containers not in ("0", "1"):
            raise E2EConfigError(f"FLEET_E2E_CONTAINERS: {containers!r} is not valid: 0 or 1")
        if containers == "1" and cluster == "local":
            raise E2EConfigError(
                "FLEET_E2E_CONTAINERS: 1 needs FLEET_E2E_CLUSTER=kubeconfig (a kind cluster: the local "
                "node runs pods as processes, with no containers to stop)"
            )
        return cls(
            cluster=cluster,
            pod_access=access,
            image=image,
            scale_pods=int(raw),
            redis_image=redis_image,
            containers=containers == "1",
        )


def external_cluster() -> Cluster:
    """The cluster of ``$KUBECONFIG`` with kubectl from PATH, as the tests' :class:`Cluster`."""
    kubeconfig = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube/config")
    kubectl = shutil.which("kubectl")
    if not kubectl:
        raise E2EConfigError("kubectl is not on PATH (FLEET_E2E_CLUSTER=kubeconfig uses the one on PATH)")
    if not Path(kubeconfig).is_file():
        raise E2EConfigError(f"KUBECONFIG: {kubeconfig} does not exist (FLEET_E2E_CLUSTER=kubeconfig)")
    return Cluster(kubeconfig=Path(kubeconfig), bin_dir=Path(kubectl).parent, state_dir=ROOT / ".cluster")


def run(argv: list[str], *, check: bool = True, timeout: float = 60, input: str | None = None) -> Any:
    """A command's CompletedProcess (text); ``check`` fails naming the command and its stderr."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        shown = " ".join(a for a in argv[:4] if not a.startswith("--kubeconfig"))
        raise AssertionError(f"{shown} ... exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}")
    return proc


def is_ready(pod: dict[str, Any]) -> bool:
    """The pod's Ready condition is True."""
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def container_pid(pod: dict[str, Any]) -> int | None:
    """The process id of a pod's first container on the local node (``localprocess://PID``)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        cid = status.get("containerID") or ""
        if cid.startswith("localprocess://") and "running" in (status.get("state") or {}):
            return int(cid.removeprefix("localprocess://"))
    return None


# -- reaching pods -------------------------------------------------------------------------------------


class PodUnreachable(Exception):
    """A pod has no address yet (not running), or its port-forward could not start."""


class PodAccess(Protocol):
    """How the suite reaches a pod's HTTP port."""

    def url(self, pod: dict[str, Any]) -> str:
        """Base URL (``http://host:port``) of the pod's limiter API."""
        ...

    def forget(self, keep: set[str]) -> None:
        """Drop what is kept for pods whose uid is not in ``keep``."""
        ...

    def close(self) -> None:
        """Stop everything this access started."""
        ...


class DirectAccess:
    """Pods at their own IPs: each pod of the local control plane has a loopback address.

    A pod IP outside 127.0.0.0/8 is refused: the suite sends traffic to loopback addresses only,
    and other clusters are reached through port-forward.
    """

    def url(self, pod: dict[str, Any]) -> str:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            raise PodUnreachable(f"pod {pod['metadata']['name']} has no IP yet")
        if not ipaddress.ip_address(ip).is_loopback:
            raise AssertionError(
                f"pod {pod['metadata']['name']} has IP {ip}, not a loopback address: set "
                "FLEET_E2E_POD_ACCESS=api-proxy to reach this cluster's pods"
            )
        return f"http://{ip}:{LIMITER_PORT}"

    def forget(self, keep: set[str]) -> None:
        return None

    def close(self) -> None:
        return None


class Forward:
    """One ``kubectl port-forward`` to ``target`` (``pod/NAME`` or ``svc/NAME``) on a free local port.

    kubectl's output goes to a file, never a pipe: it prints a line per connection, and a pipe
    nobody reads would stall it once full.
    """

    _LINE = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")

    def __init__(self, cluster: Cluster, namespace: str, target: str, remote_port: int, timeout: float = 20):
        self.target = f"{namespace}/{target}"
        self._log = tempfile.NamedTemporaryFile("w+", prefix="fleet-e2e-forward-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(cluster.kubectl_path), f"--kubeconfig={cluster.kubeconfig}", "port-forward",
                "--address", "127.0.0.1", "-n", namespace, target, f":{remote_port}",
            ],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            found = self._LINE.search(Path(self._log.name).read_text(errors="replace"))
            if found:
                self.port = int(found.group(1))
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = Path(self._log.name).read_text(errors="replace").strip()
                self.close()
                raise PodUnreachable(f"kubectl port-forward {self.target} did not start: {output[-500:]}")
            time.sleep(0.05)

    @property
    def alive(self) -> bool:
        """kubectl still forwards (it exits when its pod goes away)."""
        return self.proc.poll() is None

    def close(self) -> None:
        """Stop kubectl and remove its log."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class ApiProxyAccess:
    """Pods through the API server's pod proxy (``/api/v1/namespaces/NS/pods/NAME:8080/proxy``), served
    on 127.0.0.1 by one ``kubectl proxy`` started on first use.

    The API server dials the pod's IP (the address the limiter listens on), as the kubelet's probes
    do; ``kubectl port-forward`` would dial ``localhost`` in the pod and be refused.
    """

    _LINE = re.compile(r"Starting to serve on 127\.0\.0\.1:(\d+)")

    def __init__(self, cluster: Cluster, timeout: float = 20) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._port = 0
        self._lock = threading.Lock()

    def _start(self) -> int:
        if self._proc is not None and self._proc.poll() is None:
            return self._port
        self.close()
        self._log = tempfile.NamedTemporaryFile("w+", prefix="fleet-e2e-proxy-", suffix=".log")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                str(self.cluster.kubectl_path), f"--kubeconfig={self.cluster.kubeconfig}", "proxy",
                "--address=127.0.0.1", "--port=0", "--accept-hosts=^127\\.0\\.0\\.1$",
            ],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + self.timeout
        while True:
            found = self._LINE.search(Path(self._log.name).read_text(errors="replace"))
            if found:
                self._port = int(found.group(1))
                return self._port
            if self._proc.poll() is not None or time.monotonic() > deadline:
                output = Path(self._log.name).read_text(errors="replace").strip()
                self.close()
                raise PodUnreachable(f"kubectl proxy did not start: {output[-500:]}")
            time.sleep(0.05)

    def url(self, pod: dict[str, Any]) -> str:
        meta = pod["metadata"]
        if (pod.get("status") or {}).get("phase") != "Running":
            raise PodUnreachable(f"pod {meta['name']} is not running")
        with self._lock:
            port = self._start()
        return f"http://127.0.0.1:{port}/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}:{LIMITER_PORT}/proxy"

    def forget(self, keep: set[str]) -> None:
        return None

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


# -- Redis ---------------------------------------------------------------------------------------------


class RedisAccess(Protocol):
    """The fleets' Redis: what the chart is given, how the suite reaches it, how to take it down."""

    #: ``redis.url`` for the chart, or None for the in-chart Redis.
    chart_url: str | None

    def url(self) -> str:
        """A URL the suite's own clients can use now."""
        ...

    def stop(self) -> None:
        """An outage: the server goes away."""
        ...

    def start(self) -> None:
        """The server is back, empty (as a new Redis pod would be); returns once it answers."""
        ...

    def close(self) -> None:
        """Stop what the suite started."""
        ...


class LocalRedis:
    """A private redis-server on 127.0.0.1: pods of the local control plane are local processes."""

    def __init__(self) -> None:
        self.server = RedisServer()
        self.server.start()
        self.chart_url: str | None = self.server.url

    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.restart(flush=True)

    def close(self) -> None:
        self.server.close()


class InChartRedis:
    """The chart's own Redis Deployment, reached through ``kubectl port-forward`` to its Service."""

    chart_url: str | None = None

    def __init__(self, cluster: Cluster, namespace: str, release: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=redis"
        names = cluster.kubectl(
            "get", "deployment", "-n", namespace, "-l", self.selector, "-o", "name"
        ).split()
        if len(names) != 1:
            raise AssertionError(f"expected the chart's Redis Deployment in {namespace}, found {names}")
        self.deployment = names[0]
        self.service = self.deployment.replace("deployment.apps/", "svc/")
        self._forward: Forward | None = None
        # The watch's thread and the test's both call url(): one forward at a time.
        self._lock = threading.Lock()

    def _answers(self, port: int) -> bool:
        try:
            return send_command(("127.0.0.1", port), "PING").startswith(b"+PONG")
        except OSError:
            return False

    def url(self) -> str:
        with self._lock:
            forward = self._forward
            if forward is None or not forward.alive or not self._answers(forward.port):
                self._forward = None
                if forward is not None:
                    forward.close()
                forward = self._forward = Forward(self.cluster, self.namespace, self.service, 6379)
            return f"redis://127.0.0.1:{forward.port}/0"

    def stop(self) -> None:
        self.cluster.kubectl("scale", self.deployment, "-n", self.namespace, "--replicas=0")
        self.cluster.kubectl(
            "wait", "--for=delete", "pod", "-l", self.selector, "-n", self.namespace, "--timeout=60s",
            check=False, timeout=70,
        )  # fmt: skip

    def start(self) -> None:
        self.cluster.kubectl("scale", self.deployment, "-n", self.namespace, "--replicas=1")
        self.cluster.kubectl(
            "rollout", "status", self.deployment, "-n", self.namespace, "--timeout=120s", timeout=130
        )
        self.url()

    def close(self) -> None:
        with self._lock:
            if self._forward is not None:
                self._forward.close()
                self._forward = None


# -- the chart -----------------------------------------------------------------------------------------


def chart_values(settings: Settings, redis_url: str | None) -> list[str]:
    """``--set`` arguments of the suite's install.

    Both kinds of cluster: status refreshed every second, a 10 s grace period, and limiter pods
    that request 10m CPU (the chart asks 100m: 50 pods would not fit the local node's 2 CPUs).
    """
    values = [
        "operator.statusIntervalSeconds=1",
        "limiter.terminationGracePeriodSeconds=10",
        "limiter.resources.requests.cpu=10m",
        "limiter.resources.requests.memory=64Mi",
    ]
    if redis_url:
        values.append(f"redis.url={redis_url}")
    if settings.cluster == "kubeconfig":
        repository, _, tag = settings.image.rpartition(":")
        values += [f"image.repository={repository}", f"image.tag={tag}"]
        if settings.redis_image:
            repository, _, tag = settings.redis_image.rpartition(":")
            values += [f"redis.image.repository={repository}", f"redis.image.tag={tag}"]
    return [arg for value in values for arg in ("--set", value)]


def other_operators(cluster: Cluster, release: str | None = None) -> list[str]:
    """``namespace/pod`` of every running fleet-limiter operator not of ``release``."""
    out = cluster.kubectl(
        "get", "pods", "-A", "-o", "json",
        "-l", "app.kubernetes.io/name=fleet-limiter,app.kubernetes.io/component=operator",
    )  # fmt: skip
    return [
        f"{p['metadata']['namespace']}/{p['metadata']['name']}"
        for p in json.loads(out)["items"]
        if not p["metadata"].get("deletionTimestamp")
        and p["metadata"].get("labels", {}).get("app.kubernetes.io/instance") != release
    ]


# -- memory of local processes -------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pids: list[int], *, children: bool = True) -> dict[int, int]:
    """Resident memory in KiB of each process, with all its descendants unless ``children`` is False
    (the node agent's children are the pods, counted on their own)."""
    tree = _children() if children else {}
    out = {}
    for pid in pids:
        total, todo = 0, [pid]
        while todo:
            p = todo.pop()
            total += _rss_kb(p)
            todo.extend(tree.get(p, []))
        out[pid] = total
    return out


def control_plane_pids(state_dir: Path) -> dict[str, int]:
    """Component -> pid of the local control plane (etcd, API server, controllers, node agent), from
    its pidfiles (``pid start-time``; a pid whose start time differs was reused and is left out)."""
    out = {}
    for pidfile in sorted((state_dir / "run").glob("*.pid")):
        try:
            pid_s, start = pidfile.read_text().split()
            stat = Path(f"/proc/{pid_s}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            continue
        if stat[19] == start:  # field 22 of /proc/PID/stat (after the name: index 19)
            out[pidfile.stem] = int(pid_s)
    return out
