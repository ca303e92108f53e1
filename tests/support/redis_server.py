"""A private ``redis-server`` for tests: free loopback port, no persistence, its own directory.

Never a shared system service: each :class:`RedisServer` runs its own process, which tests may stop,
restart on the same port (outages), or kill. ``appendonly=True`` starts it with an append-only
file in its directory for durability tests (a restart then reloads the data), flushed to disk as
``appendfsync`` says (Redis's default, ``everysec``, unless given); ``cluster=True``
starts a one-node Redis Cluster that owns every slot, so cross-slot mistakes fail as they would
in production.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

MISSING_MESSAGE = (
    "redis-server is not installed (not found on PATH). The Redis tests start their own private "
    "redis-server; install it with `bash tools/ensure-deps.sh` (or run `make test`, which does), "
    "or set REDIS_SERVER to its path."
)


class RedisServerMissing(RuntimeError):
    """redis-server is not installed; the message says how to install it."""


class RedisServerError(RuntimeError):
    """redis-server did not start or stop as expected; the message carries its log."""


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, cluster: bool = False) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now. A cluster node also listens on
    port + 10000 (its bus), so Redis refuses cluster ports above 55535: those come from below."""
    if not cluster:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 55535)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RedisServerError("no free port pair (port, port + 10000) found for a cluster node")


def find_redis_server() -> str:
    """Path of the redis-server binary (``$REDIS_SERVER`` or PATH); raises RedisServerMissing."""
    path = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not path or not os.access(path, os.X_OK):
        raise RedisServerMissing(MISSING_MESSAGE)
    return path


def send_command(address: tuple[str, int], *args: str, timeout: float = 2.0) -> bytes:
    """Send one command in RESP and return its raw reply (a simple line, an error or one bulk
    string). No client library, so no pooled connection can outlive a test."""
    encoded = [a.encode() for a in args]
    payload = f"*{len(encoded)}\r\n".encode() + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in encoded)
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(payload)
        data = b""
        while True:
            chunk = s.recv(65536)
            data += chunk
            if not chunk or _complete(data):
                return data


def _complete(data: bytes) -> bool:
    if not data.endswith(b"\r\n"):
        return False
    if data.startswith(b"$"):
        header = data.index(b"\r\n")
        size = int(data[1:header])
        return size < 0 or len(data) >= header + 2 + size + 2
    return True


class RedisServer:
    """One private redis-server process on 127.0.0.1."""

    def __init__(
        self,
        *,
        appendonly: bool = False,
        cluster: bool = False,
        port: int | None = None,
        appendfsync: str | None = None,
    ) -> None:
        self.executable = find_redis_server()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.cluster = cluster
        self.host = "127.0.0.1"
        self.port = port or free_port(cluster=cluster)
        self._tmp = tempfile.TemporaryDirectory(prefix="fleet-limiter-redis-")
        self.dir = Path(self._tmp.name)
        self.log = self.dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._started = False

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    def argv(self) -> list[str]:
        """The command line: loopback only, no RDB snapshots, AOF only when asked for."""
        args = [
            self.executable,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--logfile", str(self.log),
            "--daemonize", "no",
            "--databases", "16",
        ]  # fmt: skip
        if self.appendfsync is not None:
            args += ["--appendfsync", self.appendfsync]  # always | everysec | no
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / "nodes.conf")]
        return args

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server (on the same port as before, if it ran already) and wait for PONG."""
        if self.running:
            return self
        for _ in range(3):
            try:
                return self._start(timeout)
            except RedisServerError:
                # Another process may have taken the free port between free_port() and the bind; a
                # first start may move, a restart must keep its port (clients reconnect to it).
                if self._started or "Address already in use" not in self.log_tail():
                    raise
                self.port = free_port(cluster=self.cluster)
        return self._start(timeout)

    def _start(self, timeout: float) -> RedisServer:
        self.process = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                stderr = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                self._reap()
                raise RedisServerError(
                    f"redis-server exited with {code} while starting on port {self.port}:\n"
                    f"{stderr}{self.log_tail()}"
                )
            try:
                if self.command("PING").startswith(b"+PONG"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RedisServerError(
                    f"redis-server did not answer PING within {timeout:g}s\n{self.log_tail()}"
                )
            time.sleep(0.02)
        if self.cluster:
            self._claim_all_slots(deadline)
        self._started = True
        return self

    def _claim_all_slots(self, deadline: float) -> None:
        # A one-node cluster: take every slot, then wait for the node to report the cluster healthy.
        # A restarted node remembers its slots in nodes.conf; claiming them again is then refused.
        self.command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        while b"cluster_state:ok" not in self.command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise RedisServerError(f"the one-node cluster did not become healthy\n{self.log_tail()}")
            time.sleep(0.05)

    def command(self, *args: str) -> bytes:
        """Run one command on the server and return its raw reply (for checks of the server itself)."""
        return send_command((self.host, self.port), *args)

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM: with appendonly, the AOF is flushed first)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reap()

    def restart(self, *, flush: bool = False) -> RedisServer:
        """Stop and start again on the same port; ``flush`` also forgets the data (a new pod)."""
        self.stop()
        if flush:
            for path in self.dir.iterdir():
                if path != self.log:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        return self.start()

    def _reap(self) -> None:
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def new_server(**kwargs: Any) -> RedisServer:
    """A RedisServer for a test, or a test failure naming how to install redis-server (never a skip)."""
    import pytest

    try:
        return RedisServer(**kwargs)
    except RedisServerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
