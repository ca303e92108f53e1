"""`make run`: the full local demo on the project's local Kubernetes control plane.

Brings the control plane up (or reuses it), starts a private Redis on 127.0.0.1, installs the Helm
chart (the operator), applies the example policy (three limiter pods), runs a short stream of jobs
through the pods and shows a live view of the allocation per pod (`fleet-limiter top`, instances found
in Redis). Ctrl-C (or --duration) stops the jobs, deletes the policy, uninstalls the chart and stops
Redis; the control plane keeps running for the next run (`make cluster-down` stops it).

Usage: python -P tools/demo.py [--policy FILE] [--replicas N] [--duration SECONDS] [--jobs N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from limiter.client import LimiterClient, LimiterError
from limiter.core.policy import PolicyError, load_policy
from limiter.redis.fleetstore import RedisStore
from limiter.top import run_top

ROOT = Path(__file__).resolve().parents[1]
LOCALCLUSTER = ROOT / "tools" / "localcluster"
CHART = ROOT / "charts" / "fleet-limiter"
KUBECONFIG = ROOT / ".cluster" / "kubeconfig"
RUN = ROOT / ".run" / "demo"
REDIS_PID = RUN / "redis.pid"
RELEASE = "fleet-limiter-demo"
NAMESPACE = "fleet-limiter-demo"
#: Label of the demo's namespace, so that the next run finds what an interrupted one left.
DEMO_LABEL = "fleet-limiter-demo"
POLICY_LABEL = "fleetlimiter.io/policy"
OPERATOR_CLI = Path(sys.executable).with_name("fleet-limiter-operator")


class DemoError(Exception):
    """A step failed; the message says what to do."""


class Interrupted(BaseException):
    """SIGTERM, handled like Ctrl-C: clean up and stop."""


class Steps:
    """One line per step, with the seconds since the start."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        self.console.print(
            f"[dim]{time.monotonic() - self.started:6.1f}s[/] {escape(message)}",
            highlight=False,
            soft_wrap=True,
        )

    def detail(self, line: str) -> None:
        """A line of a step's own output, indented under it, as it is."""
        self.console.print(Text("         " + line, style="dim"), soft_wrap=True)


def cluster_bin() -> Path:
    """The build cache's bin folder (kubectl, helm), as tools/localcluster/env.sh names it."""
    out = subprocess.run(
        ["bash", "-c", f'source "{LOCALCLUSTER}/env.sh" && echo "$CLUSTER_BIN"'],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def is_ready(pod: dict[str, Any]) -> bool:
    """Not being deleted, and its Ready condition is True."""
    conditions = pod["status"].get("conditions") or []
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


def shown(path: Path) -> str:
    """A path as a person typed it: relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Demo:
    """The demo's resources, created in order and removed in reverse by :meth:`cleanup`."""

    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.step = Steps(console)
        self.bin = cluster_bin()
        self.redis: subprocess.Popen[bytes] | None = None
        self.redis_url = ""
        self.installed = False
        self.policy_name = ""

    # -- commands --------------------------------------------------------------------------------------

    def run(self, argv: list[str], *, timeout: float = 120, input: str | None = None) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        if proc.returncode != 0:
            raise DemoError(f"{Path(argv[0]).name} {' '.join(argv[1:3])} failed: {proc.stderr.strip()}")
        return proc.stdout

    def kubectl(self, *args: str, timeout: float = 60, input: str | None = None) -> str:
        return self.run(
            [str(self.bin / "kubectl"), f"--kubeconfig={KUBECONFIG}", *args], timeout=timeout, input=input
        )

    def helm(self, *args: str, timeout: float = 200) -> str:
        return self.run([str(self.bin / "helm"), f"--kubeconfig={KUBECONFIG}", *args], timeout=timeout)

    def quietly(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Clean-up steps go on when one fails; the failure is shown."""
        try:
            fn(*args, **kwargs)
        except (DemoError, subprocess.TimeoutExpired, OSError) as exc:
            self.console.print(f"[yellow]warning:[/] {escape(str(exc))}", soft_wrap=True)

    # -- steps -----------------------------------------------------------------------------------------

    def cluster_up(self) -> None:
        for tool in ("kubectl", "helm"):
            if not (self.bin / tool).exists():
                raise DemoError(f"{self.bin / tool} is missing: run `make cluster-build` first")
        self.step("the local control plane: starting it, or reusing the running one")
        proc = subprocess.Popen(
            [sys.executable, "-P", str(LOCALCLUSTER / "cluster.py"), "up"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        with proc:
            for line in proc.stdout:
                self.step.detail(line.rstrip())
        if proc.returncode != 0:
            raise DemoError("the local control plane did not come up (see above)")

    def remove_leftovers(self) -> None:
        """What an interrupted demo left (its namespace, found by label: the operator, the policy and
        its pods; its Redis), removed in the order of docs/operator.md#uninstall. Its Redis goes last:
        its operator, if it still runs, needs it to remove the policy's keys."""
        found = self.kubectl("get", "namespaces", "-l", DEMO_LABEL, "-o", "name").split()
        if self.kubectl("get", "namespace", NAMESPACE, "--ignore-not-found", "-o", "name").strip():
            found.append(f"namespace/{NAMESPACE}")
        names = sorted({n.removeprefix("namespace/") for n in found})
        for ns in names:
            self.step(f"removing what an interrupted demo left in namespace {ns}")
            self.quietly(self.kubectl, "delete", "rlp", "--all", "-n", ns, "--wait=false")
            deadline = time.monotonic() + 20  # its operator, if it still runs, finishes them
            while self.kubectl("get", "rlp", "-n", ns, "-o", "name").strip() and time.monotonic() < deadline:
                time.sleep(0.5)
            stuck = bool(self.kubectl("get", "rlp", "-n", ns, "-o", "name").strip())
            for release in self.helm("list", "-n", ns, "-q").split():
                hooks = ["--no-hooks"] if stuck else []
                try:
                    self.helm("uninstall", release, "-n", ns, "--wait", "--timeout", "90s", *hooks)
                except DemoError:
                    stuck = True
                    self.quietly(self.helm, "uninstall", release, "-n", ns, "--wait", "--no-hooks")
            if stuck:  # no operator left to run their finalizer: release it
                out = self.run(
                    [str(OPERATOR_CLI), "release-finalizers", f"--kubeconfig={KUBECONFIG}", "-n", ns]
                )
                for line in out.splitlines():
                    self.step.detail(line)
            self.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", timeout=130)
        self.stop_stale_redis()

    def stop_stale_redis(self) -> None:
        """The Redis of an interrupted demo (its own session: a killed demo leaves it running)."""
        ours = False
        try:
            pid = int(REDIS_PID.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            REDIS_PID.unlink(missing_ok=True)
            return
        # Redis rewrites its command line to "redis-server HOST:PORT": the program is its first word;
        # it runs in its --dir, so a recycled pid of another redis-server is left alone.
        program = cmdline[0].decode(errors="replace").split(" ", 1)[0] if cmdline else ""
        with contextlib.suppress(OSError):
            ours = (
                Path(program).name == "redis-server" and Path(f"/proc/{pid}/cwd").resolve() == RUN.resolve()
            )
        if ours:
            self.step(f"stopping the Redis of an interrupted demo (pid {pid})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        REDIS_PID.unlink(missing_ok=True)

    def check_alone(self) -> None:
        out = json.loads(
            self.kubectl(
                "get", "pods", "-A", "-o", "json",
                "-l", "app.kubernetes.io/name=fleet-limiter,app.kubernetes.io/component=operator",
            )
        )  # fmt: skip
        others = [
            f"{p['metadata']['namespace']}/{p['metadata']['name']}"
            for p in out["items"]
            if not p["metadata"].get("deletionTimestamp")
        ]
        if others:
            raise DemoError(
                f"another fleet-limiter operator runs in the cluster ({', '.join(others)}); it would act on "
                "the demo's policy too: uninstall it (helm uninstall -n NAMESPACE RELEASE) or wait for the "
                "tests that installed it"
            )

    def start_redis(self) -> None:
        redis_server = shutil.which("redis-server")
        if not redis_server:
            raise DemoError("redis-server is not installed: run `bash tools/ensure-deps.sh`")
        RUN.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        # Its own session: a Ctrl-C in the terminal must not stop Redis before the policy's finalizer,
        # which needs it, has removed the policy's keys.
        self.redis = subprocess.Popen(
            [
                redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(RUN), "--logfile", str(RUN / "redis.log"),
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    break
            if self.redis.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"redis-server did not start; see {RUN / 'redis.log'}")
            time.sleep(0.05)
        REDIS_PID.write_text(str(self.redis.pid))
        self.step(f"a private Redis on 127.0.0.1:{port} (log: {RUN.relative_to(ROOT)}/redis.log)")

    def install(self) -> None:
        self.step(f"helm install {RELEASE} charts/fleet-limiter -n {NAMESPACE} (the operator, the CRD, RBAC)")
        self.kubectl("create", "namespace", NAMESPACE)
        self.kubectl("label", "namespace", NAMESPACE, f"{DEMO_LABEL}=run")
        if self.kubectl(
            "get", "crd", "ratelimitpolicies.fleetlimiter.io", "--ignore-not-found", "-o", "name"
        ):
            # helm installs crds/ only when absent: bring an older CRD up to date.
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
        self.installed = True
        self.helm(
            "install", RELEASE, str(CHART), "-n", NAMESPACE,
            "--set", f"redis.url={self.redis_url}",
            "--set", "operator.statusIntervalSeconds=2",
            "--set", "limiter.resources.requests.cpu=10m",
            "--set", "limiter.terminationGracePeriodSeconds=10",
            "--wait", "--timeout", "180s",
        )  # fmt: skip
        self.step("the operator is running")

    def apply_policy(self) -> tuple[str, int, list[str]]:
        doc = yaml.safe_load(self.args.policy.read_text())
        doc["metadata"]["namespace"] = NAMESPACE
        if self.args.replicas is not None:
            doc["spec"]["fleet"] = {"replicas": self.args.replicas}
        name = doc["metadata"]["name"]
        replicas = int((doc["spec"].get("fleet") or {}).get("replicas", 1))
        self.policy_name = name
        self.step(f"kubectl apply {shown(self.args.policy)}: policy {name}, {replicas} limiter pods")
        self.kubectl("apply", "-f", "-", input=json.dumps(doc))
        job_types = [j["name"] for j in doc["spec"]["jobTypes"]]
        return name, replicas, job_types

    def wait_fleet(self, name: str, replicas: int) -> list[str]:
        deadline = time.monotonic() + 180
        while True:
            pods = json.loads(
                self.kubectl("get", "pods", "-n", NAMESPACE, "-l", f"{POLICY_LABEL}={name}", "-o", "json")
            )
            ready = [p for p in pods["items"] if is_ready(p)]
            obj = json.loads(self.kubectl("get", "rlp", name, "-n", NAMESPACE, "-o", "json"))
            conditions = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}
            if len(ready) == replicas and conditions.get("Ready") == "True":
                break
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the fleet was not ready in 180 s: {len(ready)}/{replicas} pods ready, {conditions}"
                )
            time.sleep(0.5)
        urls = []
        for p in sorted(ready, key=lambda p: p["metadata"]["name"]):
            urls.append(f"http://{p['status']['podIP']}:8080")
            self.step(f"pod {p['metadata']['name']} ready at {urls[-1]}")
        for line in self.kubectl("get", "rlp", "-n", NAMESPACE).splitlines():
            self.step.detail(line)
        return urls

    def remove_policy(self) -> None:
        """Delete the policies (the operator's finalizer stops the pods and removes the Redis keys)."""
        self.quietly(
            self.kubectl,
            "delete",
            "rlp",
            "--all",
            "-n",
            NAMESPACE,
            "--wait=true",
            "--timeout=90s",
            timeout=100,
        )

    def cleanup(self) -> None:
        if self.installed:
            self.step("deleting the policy (its pods stop, its Redis keys go)")
            self.remove_policy()
            self.step(f"helm uninstall {RELEASE}")
            self.quietly(self.helm, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "90s")
            self.quietly(self.kubectl, "delete", "namespace", NAMESPACE, "--wait=false")
        if self.redis is not None:
            self.step("stopping Redis")
            if self.redis.poll() is None:
                self.redis.terminate()
                try:
                    self.redis.wait(10)
                except subprocess.TimeoutExpired:
                    self.redis.kill()
                    self.redis.wait()
            REDIS_PID.unlink(missing_ok=True)
        self.step("done; the local control plane keeps running (`make cluster-down` stops it)")


# -- the live part -------------------------------------------------------------------------------------


async def job_stream(
    urls: list[str], job_types: list[str], stop: asyncio.Event, limit: int, done: Counter[str]
) -> None:
    """Two workers per pod acquiring, holding and releasing leases, until ``limit`` jobs or ``stop``."""
    started = 0

    async def worker(i: int) -> None:
        nonlocal started
        rng = random.Random(i)
        url = urls[i % len(urls)]
        async with LimiterClient(url) as client:
            while not stop.is_set() and started < limit:
                started += 1
                try:
                    async with client.job(rng.choice(job_types), wait_seconds=5) as lease:
                        await asyncio.sleep(rng.uniform(0.3, 1.5))
                        lease.report(
                            tokens=max(1, int(lease.reserved.get("tokens", 1) * rng.uniform(0.3, 1.0)))
                        )
                    done[f"{url} completed"] += 1
                except (LimiterError, aiohttp.ClientError, OSError):
                    done[f"{url} refused"] += 1
                    await asyncio.sleep(0.5)

    await asyncio.gather(*(worker(i) for i in range(2 * len(urls))))


async def live(args: argparse.Namespace, demo: Demo, urls: list[str], job_types: list[str]) -> None:
    """The job stream and the live view, until Ctrl-C, SIGTERM or --duration."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    done: Counter[str] = Counter()
    stream = asyncio.create_task(job_stream(urls, job_types, stop, args.jobs, done))
    store = RedisStore.from_url(demo.redis_url, NAMESPACE, demo.policy_name)
    frames = None if args.duration is None else max(1, round(args.duration / args.interval))
    demo.step(
        f"a stream of {args.jobs} jobs through the pods; the live view follows "
        f"(instances found in Redis, as `fleet-limiter top --redis {demo.redis_url} --policy "
        f"{NAMESPACE}/{demo.policy_name}` shows them){'' if frames else '; Ctrl-C stops'}"
    )
    try:
        view = asyncio.create_task(
            run_top([], store, interval=args.interval, frames=frames, console=demo.console)
        )
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({view, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        for task in (view, stopper):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await stream
    finally:
        await store.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    completed = sum(v for k, v in done.items() if k.endswith("completed"))
    refused = sum(v for k, v in done.items() if k.endswith("refused"))
    demo.step(f"job stream: {completed} jobs completed, {refused} refused or retried")
    for url in urls:
        demo.step.detail(f"{url}: {done[f'{url} completed']} completed, {done[f'{url} refused']} refused")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the demo the way Ctrl-C does (with the clean-up)."""

    def raise_interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--policy", type=Path, default=ROOT / "examples" / "production.yaml")
    parser.add_argument("--replicas", type=int, default=None, help="limiter pods (default: the policy's)")
    parser.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds of live view"
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes of the view")
    parser.add_argument("--jobs", type=int, default=600, help="jobs in the stream (default 600)")
    args = parser.parse_args()
    args.policy = args.policy.resolve()
    if args.replicas is not None and not 1 <= args.replicas <= 20:
        parser.error("--replicas: from 1 to 20")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration: more than 0 seconds")
    if args.interval <= 0 or args.jobs < 0:
        parser.error("--interval: more than 0; --jobs: 0 or more")
    console = Console()
    try:
        load_policy(args.policy)
    except PolicyError as exc:
        console.print(f"[red]error:[/] {exc.first_line()}")
        return 2
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    demo = Demo(args, console)
    code = 0
    with sigterm_as_interrupt():
        try:
            demo.cluster_up()
            demo.remove_leftovers()
            demo.check_alone()
            demo.start_redis()
            demo.install()
            name, replicas, job_types = demo.apply_policy()
            urls = demo.wait_fleet(name, replicas)
            asyncio.run(live(args, demo, urls, job_types))
        except (KeyboardInterrupt, Interrupted):
            console.print("\ninterrupted: cleaning up")
        except DemoError as exc:
            console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
            code = 1
        finally:
            # Clean-up is bounded (every command has a timeout); a second Ctrl-C must not leave a
            # half-removed fleet behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            demo.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
