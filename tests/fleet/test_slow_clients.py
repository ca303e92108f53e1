"""Idle and slow connections time out on a real instance (FLEET_LIMITER_IDLE_TIMEOUT_SECONDS,
FLEET_LIMITER_BODY_TIMEOUT_SECONDS): a connection that sends nothing, or headers that never end,
is closed; a body that never arrives is answered 408 with a JSON error."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.support.fleet import Fleet, Instance

POLICY = {
    "models": [{"name": "m", "limits": {"maxConcurrentRequests": 10}}],
    "jobTypes": [{"name": "a", "ratio": 1}],
}
ENV = {"FLEET_LIMITER_IDLE_TIMEOUT_SECONDS": "1", "FLEET_LIMITER_BODY_TIMEOUT_SECONDS": "1"}


def connect(inst: Instance) -> socket.socket:
    host, port = inst.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def closed_after(sock: socket.socket) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock``, and what it sent before."""
    started, got = time.monotonic(), b""
    while chunk := sock.recv(4096):
        got += chunk
    return time.monotonic() - started, got


@pytest.mark.timeout(60)
def test_idle_and_slow_connections_are_closed(fleet: Fleet) -> None:
    fleet.write_policy("slow", POLICY)
    (inst,) = fleet.start(1, env=ENV)
    idle = [connect(inst) for _ in range(20)]  # never send a byte
    slow = connect(inst)
    slow.sendall(b"POST /api/jobs/acquire HTTP/1.1\r\nHost: x\r\n")  # headers that never end
    for sock in [*idle, slow]:
        seconds, got = closed_after(sock)
        assert seconds < 5 and got == b"", (seconds, got)
        sock.close()
    # A body announced and never sent: 408 with the JSON error, within the body timeout.
    body = connect(inst)
    started = time.monotonic()
    body.sendall(b"POST /api/jobs/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    got = b""
    while b"\r\n\r\n" not in got:
        got += body.recv(4096)
    head, _, payload = got.partition(b"\r\n\r\n")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1]
    )
    while len(payload) < length:
        payload += body.recv(4096)
    body.close()
    assert head.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 5, got
    assert "not received within 1 s" in json.loads(payload)["error"]
    # The instance is unharmed.
    status, doc, _ = inst.post("/api/jobs/acquire", {"jobType": "a"})
    assert status == 200, doc
