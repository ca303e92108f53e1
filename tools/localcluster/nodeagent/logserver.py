"""`kubectl logs` for pods on the local node: the API server calls GET /containerLogs/{ns}/{pod}/{container}
on the node's kubelet port (TLS, client certificate of the API server), as it would call a kubelet."""

from __future__ import annotations

import argparse
import asyncio
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from main import Agent


def _log_file(agent: Agent, ns: str, pod: str, container: str, previous: bool) -> tuple[Path | None, object]:
    for w in agent.workers.values():
        if w.namespace == ns and w.name == pod:
            for c in w.init_containers + w.containers:
                if c.name == container:
                    n = c.restart_count - (1 if previous else 0)
                    if n < 0:
                        return None, c
                    return w.log_dir / container / f"{n}.log", c
    return None, None


async def container_logs(request: web.Request) -> web.StreamResponse:
    agent: Agent = request.app["agent"]
    ns, pod, container = request.match_info["ns"], request.match_info["pod"], request.match_info["container"]
    q = request.query
    previous = q.get("previous") == "true"
    path, c = _log_file(agent, ns, pod, container, previous)
    if c is None:
        raise web.HTTPNotFound(text=f"container {container!r} of pod {ns}/{pod} is not on this node\n")
    if path is None or not path.exists():
        raise web.HTTPBadRequest(
            text=f"previous terminated container {container!r} in pod {pod!r} not found\n"
        )
    data = path.read_bytes()
    if "tailLines" in q:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-int(q["tailLines"]) :]) if int(q["tailLines"]) > 0 else b""
    if "limitBytes" in q:
        data = data[: int(q["limitBytes"])]
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    await resp.write(data)
    if q.get("follow") == "true" and not previous:
        offset = path.stat().st_size
        run = c.restart_count  # type: ignore[attr-defined]
        while True:
            size = path.stat().st_size
            if size > offset:
                with path.open("rb") as f:
                    f.seek(offset)
                    await resp.write(f.read(size - offset))
                offset = size
            proc = c.proc  # type: ignore[attr-defined]
            if c.restart_count != run or proc is None or proc.returncode is not None:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.3)
    await resp.write_eof()
    return resp


async def start_log_server(agent: Agent, args: argparse.Namespace) -> web.AppRunner:
    app = web.Application()
    app["agent"] = agent
    app.router.add_get("/containerLogs/{ns}/{pod}/{container}", container_logs)
    app.router.add_get("/healthz", lambda _: web.Response(text="ok"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=args.ca_file)
    ctx.load_cert_chain(args.serving_cert_file, args.serving_key_file)
    ctx.verify_mode = ssl.CERT_REQUIRED  # only the API server (a client certificate of this cluster's CA)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port, ssl_context=ctx).start()
    return runner
