"""Readiness and liveness probes (HTTP GET, TCP socket, exec), run against the pod's address."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from typing import Any

import aiohttp


def resolve_port(port: int | str, container: dict[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"probe port {port!r} is not a named port of container {container['name']!r}")


async def probe(spec: dict[str, Any], container: dict[str, Any], pod_ip: str, env: dict[str, str]) -> bool:
    """Runs one probe attempt; True on success. Timeouts and errors count as failure."""
    seconds = float(spec.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in spec:
            return await _http_get(spec["httpGet"], container, pod_ip, seconds)
        if "tcpSocket" in spec:
            return await _tcp(spec["tcpSocket"], container, pod_ip, seconds)
        if "exec" in spec:
            return await _exec(spec["exec"].get("command") or [], env, seconds)
    except (TimeoutError, OSError, aiohttp.ClientError, ValueError):
        return False
    return False  # grpc probes are not supported here


async def _http_get(h: dict[str, Any], container: dict[str, Any], pod_ip: str, seconds: float) -> bool:
    scheme = (h.get("scheme") or "HTTP").lower()
    host = h.get("host") or pod_ip
    port = resolve_port(h["port"], container)
    path = h.get("path") or "/"
    headers = {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
    ctx: ssl.SSLContext | bool = False
    if scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # kubelet does not verify probe certificates either
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=seconds)) as s,
        s.get(f"{scheme}://{host}:{port}{path}", headers=headers, ssl=ctx, allow_redirects=False) as r,
    ):
        return 200 <= r.status < 400


async def _tcp(t: dict[str, Any], container: dict[str, Any], pod_ip: str, seconds: float) -> bool:
    host = t.get("host") or pod_ip
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(host, resolve_port(t["port"], container)), seconds
    )
    writer.close()
    await writer.wait_closed()
    return True


async def _exec(argv: list[str], env: dict[str, str], seconds: float) -> bool:
    if not argv:
        return False
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        return await asyncio.wait_for(proc.wait(), seconds) == 0
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return False
