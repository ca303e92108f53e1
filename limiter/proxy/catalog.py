"""What the proxy answers itself, from the policy, without calling an upstream: the model lists
and the server facts that OpenAI and Ollama clients (the Ollama CLI, Open WebUI) ask for before
they generate.

* ``GET /v1/models``, ``GET /v1/models/{model}``: the proxied models in OpenAI's list shape. Every
  proxied model is listed: ``/v1/...`` paths forward to any upstream (Ollama serves the OpenAI API
  too). With ``X-Job-Type``, only the models that job type may use.
* ``GET /api/tags``: the proxied models whose upstream speaks Ollama (the only ones Ollama's
  ``/api/chat`` and ``/api/generate`` reach through the proxy), in Ollama's shape.
* ``GET /api/ps``: those of them with requests running or queued on this instance.
* ``GET /api/version``: the Ollama API version the proxy speaks.
* ``GET /`` (and ``HEAD /``): ``Ollama is running``, the heartbeat the Ollama CLI checks before
  every command (it would try to start a server of its own otherwise).

The proxy knows no file sizes or digests: ``size`` is 0 and ``digest`` empty; ``modified_at`` is when
this instance started. ``POST /api/show`` and ``POST /api/embed`` are forwarded instead
(:data:`limiter.proxy.wire.ROUTES`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from limiter.core.policy import ModelSpec
from limiter.proxy.service import JOB_TYPE_HEADER, Proxy
from limiter.proxy.upstream import error_response
from limiter.web.toolkit import json_response

#: The Ollama API version answered by ``GET /api/version``: the API whose endpoints the proxy
#: serves (clients compare it to warn of an old server).
OLLAMA_API_VERSION = "0.6.0"
#: ``expires_at`` of ``/api/ps``: Ollama's default keep-alive after the last request.
KEEP_ALIVE = timedelta(minutes=5)


def _listed(proxy: Proxy, request: web.Request) -> list[ModelSpec] | web.Response:
    models = proxy.proxied_models()
    name = request.headers.get(JOB_TYPE_HEADER, "").strip()
    spec = proxy.instance.spec
    if not name or spec is None:
        return models
    try:
        allowed = set(spec.models_of(spec.job_type(name)))
    except KeyError:
        known = ", ".join(j.name for j in spec.job_types)
        return error_response(
            "openai", 404, f"{JOB_TYPE_HEADER}: unknown job type '{name}'; known job types: {known}"
        )
    return [m for m in models if m.name in allowed]


def _ollama_model(model: ModelSpec, modified_at: str) -> dict[str, Any]:
    details = {"parent_model": "", "format": "", "family": "", "families": None,
               "parameter_size": "", "quantization_level": ""}  # fmt: skip
    return {"name": model.name, "model": model.name, "modified_at": modified_at, "size": 0, "digest": "",
            "details": details}  # fmt: skip


def routes(proxy: Proxy) -> list[web.RouteDef]:
    """The catalog endpoints, bound to ``proxy``."""
    started = int(time.time())
    started_at = datetime.fromtimestamp(started, UTC).isoformat().replace("+00:00", "Z")

    def openai_model(model: ModelSpec) -> dict[str, Any]:
        return {"id": model.name, "object": "model", "created": started, "owned_by": "fleet-limiter"}

    async def list_models(request: web.Request) -> web.Response:
        models = _listed(proxy, request)
        if isinstance(models, web.Response):
            return models
        return json_response({"object": "list", "data": [openai_model(m) for m in models]})

    async def get_model(request: web.Request) -> web.Response:
        name = request.match_info["model"]
        models = _listed(proxy, request)
        if isinstance(models, web.Response):
            return models
        for m in models:
            if m.name == name:
                return json_response(openai_model(m))
        listed = ", ".join(m.name for m in models) or "none"
        return error_response("openai", 404, f"model: unknown model '{name}'; proxied models: {listed}")

    def ollama_models() -> list[ModelSpec]:
        return [
            m for m in proxy.proxied_models() if m.upstream is not None and m.upstream.protocol == "ollama"
        ]

    async def tags(request: web.Request) -> web.Response:
        del request
        return json_response({"models": [_ollama_model(m, started_at) for m in ollama_models()]})

    async def ps(request: web.Request) -> web.Response:
        del request
        expires = (datetime.now(UTC) + KEEP_ALIVE).isoformat().replace("+00:00", "Z")
        running = []
        for m in ollama_models():
            q = proxy.queues.get(m.name)
            if q is not None and (q.active or q.queued):
                running.append({**_ollama_model(m, started_at), "expires_at": expires, "size_vram": 0})
        for entry in running:
            del entry["modified_at"]
        return json_response({"models": running})

    async def version(request: web.Request) -> web.Response:
        del request
        return json_response({"version": OLLAMA_API_VERSION})

    async def heartbeat(request: web.Request) -> web.Response:
        del request
        return web.Response(text="Ollama is running")

    return [
        web.get("/", heartbeat),
        web.get("/v1/models", list_models),
        web.get("/v1/models/{model:.+}", get_model),
        web.get("/api/tags", tags),
        web.get("/api/ps", ps),
        web.get("/api/version", version),
    ]
