"""Limiter instances as real processes: `fleet-limiter serve` on its own loopback port, started,
stopped (SIGTERM), killed (SIGKILL) and paused (SIGSTOP) like a pod would be."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
from pathlib import Path
from typing import Any

import yaml

from tests.support.http import http
from tests.support.redis_server import free_port
from tests.support.waiting import wait_until

EXE = Path(sys.executable).with_name("fleet-limiter")


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

    def wait_ready(self, timeout: float = 30.0) -> Instance:
        """Until GET /ready answers 200; fails with the log if the process exits or never gets there.

        Nine instances started at once on two busy cores take about 15 s to be ready (mostly
        imports): the timeout only catches an instance that never gets there."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"instance exited {self.process.returncode}:\n{self.log()}")
            try:
                return http("GET", self.url + "/ready", timeout=1)[0] == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        try:
            wait_until(ready, timeout, interval=0.05, what=f"instance on {self.port} to be ready")
        except AssertionError as exc:
            if self.process.poll() is not None:
                raise
            raise AssertionError(f"{exc}:\n{self.log()}") from None
        return self

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
