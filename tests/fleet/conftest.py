"""Fixtures for fleet tests: a private redis-server and limiter instances as real processes.

Each instance is `fleet-limiter serve` on its own loopback port, started, stopped (SIGTERM),
killed (SIGKILL) and paused (SIGSTOP) like a pod would be.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.redis_server import RedisServer, free_port, new_server

EXE = Path(sys.executable).with_name("fleet-limiter")


def http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any, dict[str, str]]:
    """One HTTP call: (status, decoded JSON or text, headers)."""
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status, headers = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, headers = exc.read(), exc.code, dict(exc.headers)
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, raw.decode(), headers


class Instance:
    """One `fleet-limiter serve` process."""

    def __init__(self, policy: Path, redis_url: str, log_dir: Path, extra_env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"instance-{self.port}.log"
        env = {**os.environ, **(extra_env or {}), "FLEET_LIMITER_INSTANCE_ID": f"i-{self.port}"}
        self.id = env["FLEET_LIMITER_INSTANCE_ID"]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(EXE), "serve", "--policy", str(policy), "--redis", redis_url, "--host", "127.0.0.1",
             "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 15.0) -> Instance:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"instance exited {self.process.returncode}:\n{self.log()}")
            try:
                if http("GET", self.url + "/ready", timeout=1)[0] == 200:
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"instance on {self.port} not ready within {timeout} s:\n{self.log()}")

    def get(self, path: str) -> Any:
        status, doc, _ = http("GET", self.url + path)
        assert status == 200, (status, doc)
        return doc

    def post(self, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any, dict[str, str]]:
        return http("POST", self.url + path, body, timeout=timeout)

    def allocation(self) -> dict[str, Any]:
        return self.get("/api/debug/allocation")  # type: ignore[no-any-return]

    def slots(self, job: str, model: str) -> int:
        return int(self.allocation()["slotsByJobTypeAndModel"][job][model]["slots"])

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the graceful path."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> float:
    """Poll until ``check()`` holds; return the seconds it took (fail after ``timeout``)."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's private redis-server (tests use distinct policy names, or flush)."""
    with new_server() as server:
        yield server


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that restart it."""
    with new_server() as server:
        yield server


class Fleet:
    """Starts instances of one policy; stops every one of them at teardown."""

    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.tmp = tmp
        self.redis_url = redis_url
        self.instances: list[Instance] = []
        self.policy: Path | None = None

    def write_policy(self, name: str, spec: dict[str, Any]) -> Path:
        self.policy = self.tmp / f"{name}.yaml"
        manifest = {
            "apiVersion": "fleetlimiter.io/v1alpha1",
            "kind": "RateLimitPolicy",
            "metadata": {"name": name, "namespace": "tests"},
            "spec": spec,
        }
        self.policy.write_text(yaml.safe_dump(manifest))
        return self.policy

    def start(self, n: int = 1, ready: bool = True, env: dict[str, str] | None = None) -> list[Instance]:
        assert self.policy is not None, "write_policy first"
        new = [Instance(self.policy, self.redis_url, self.tmp, env) for _ in range(n)]
        self.instances += new
        if ready:
            for inst in new:
                inst.wait_ready()
        return new

    def live(self) -> list[Instance]:
        return [i for i in self.instances if i.process.poll() is None]

    def close(self) -> None:
        for inst in self.instances:
            inst.close()


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer) -> Iterator[Fleet]:
    redis_server.start()
    f = Fleet(tmp_path, redis_server.url)
    yield f
    f.close()
