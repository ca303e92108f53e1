"""The HTTP API of a limiter instance (SPEC section 6), on aiohttp.

Every answer is JSON; every error is ``{"error": message, "status": code}`` with the right status:
400 for a bad body, 404 for an unknown job type, lease or route, 503 with ``Retry-After`` when no
slot can be had, never a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from limiter.instance import LimiterInstance, NoCapacity, dumps
from limiter.jobtypes import AdmissionError, QueueFull
from limiter.metrics import CONTENT_TYPE, registry_for, render
from limiter.policy import format_validation_error

log = logging.getLogger("fleet_limiter.http")

INSTANCE: web.AppKey[LimiterInstance] = web.AppKey("instance", LimiterInstance)
REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
T = TypeVar("T", bound=BaseModel)
MAX_BODY_BYTES = 1 << 20


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class EstimateBody(_Body):
    tokens: int | None = Field(default=None, ge=0)
    requests: int | None = Field(default=None, ge=0)
    memory_kb: int | None = Field(default=None, ge=0, alias="memoryKB")

    def as_dict(self) -> dict[str, int]:
        raw = {"tokens": self.tokens, "requests": self.requests, "memoryKB": self.memory_kb}
        return {k: v for k, v in raw.items() if v is not None}


class AcquireBody(_Body):
    job_type: str | None = Field(default=None, alias="jobType", min_length=1)
    models: list[str] | None = Field(default=None, min_length=1)
    estimate: EstimateBody | None = None
    wait_seconds: float | None = Field(default=None, alias="waitSeconds", ge=0, le=86400)


class ActualBody(_Body):
    tokens: int | None = Field(default=None, ge=0)
    requests: int | None = Field(default=None, ge=0)


class ReleaseBody(_Body):
    actual: ActualBody | None = None


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=dumps(doc), status=status, content_type="application/json", headers=headers)


def json_error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    return json_response({"error": message, "status": status, **extra}, status=status, headers=headers)


async def read_body(request: web.Request, model: type[T], *, optional: bool = False) -> T:
    """Parse and validate a JSON body; raise 400 naming the field."""
    raw = await request.read()
    if not raw.strip():
        if optional:
            return model()
        raise BadRequest("body: a JSON object is required")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"body: expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest("; ".join(format_validation_error(exc, prefix=""))) from None


class BadRequest(Exception):
    """A 400 with a message that names the field."""


@web.middleware
async def errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every error into a JSON answer."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return json_error(400, str(exc))
    except Unauthorized as exc:
        return json_error(401, str(exc), {"WWW-Authenticate": "Bearer"})
    except NoCapacity as exc:
        return json_error(503, exc.message, {"Retry-After": str(math.ceil(exc.retry_after))})
    except QueueFull as exc:
        return json_error(503, exc.message, {"Retry-After": "1"})
    except AdmissionError as exc:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return json_error(exc.status, exc.message, headers)
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, f"body: larger than {MAX_BODY_BYTES} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.reason
        if exc.status == 404:
            reason = f"no route {request.method} {request.path}"
        elif exc.status == 405:
            reason = f"method {request.method} not allowed on {request.path}"
        return json_error(exc.status, reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal error; see the instance's log")


async def acquire(request: web.Request) -> web.Response:
    body = await read_body(request, AcquireBody)
    inst = request.app[INSTANCE]
    ticket = await inst.acquire(
        body.job_type,
        body.models,
        body.estimate.as_dict() if body.estimate else None,
        body.wait_seconds,
    )
    return json_response(
        {
            "leaseId": ticket.id,
            "model": ticket.model,
            "jobType": ticket.job_type,
            "reserved": ticket.reserved,
            "borrowed": ticket.borrowed,
            "instanceId": inst.instance_id,
        }
    )


async def release(request: web.Request) -> web.Response:
    body = await read_body(request, ReleaseBody, optional=True)
    actual = body.actual.model_dump(exclude_none=True) if body.actual else None
    result = await request.app[INSTANCE].release(request.match_info["lease_id"], actual)
    return json_response(result)


async def debug_allocation(request: web.Request) -> web.Response:
    return json_response(request.app[INSTANCE].debug_allocation())


async def health(request: web.Request) -> web.Response:
    inst = request.app[INSTANCE]
    doc = inst.health()
    doc["concurrency"] = concurrency(inst)
    return json_response(doc)


def concurrency(inst: LimiterInstance) -> dict[str, Any]:
    """The ``concurrency`` section of ``/health``: the proxy's defaults, proxied models and memory,
    the same numbers as ``/queue/stats`` and ``/queue/memory``."""
    from limiter import proxy  # the proxy module imports this one

    return proxy.concurrency(inst)


async def ready(request: web.Request) -> web.Response:
    ok, reason = request.app[INSTANCE].ready()
    return json_response({"ready": ok, "reason": reason}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body = render(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


class Unauthorized(Exception):
    """A 401: the admin token is missing or wrong."""


def require_admin(request: web.Request) -> None:
    """Admin endpoints need ``Authorization: Bearer <admin token>`` (``--admin-token`` or
    ``FLEET_LIMITER_ADMIN_TOKEN``); without a configured token they are refused to everyone."""
    token = request.app[INSTANCE].settings.admin_token
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if not token:
        raise Unauthorized("admin endpoints are disabled: start the instance with --admin-token")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("Authorization: a valid 'Bearer <admin token>' header is required")


def build_app(instance: LimiterInstance) -> web.Application:
    """The aiohttp application serving ``instance``.

    Feature modules (the LLM proxy, credit budgets) add their routes through an
    ``install(app, instance)`` function called here.
    """
    app = web.Application(middlewares=[errors_as_json], client_max_size=MAX_BODY_BYTES)
    app[INSTANCE] = instance
    app[REGISTRY] = registry_for(instance)
    app.router.add_post("/api/jobs/acquire", acquire)
    app.router.add_post("/api/jobs/{lease_id}/release", release)
    app.router.add_get("/api/debug/allocation", debug_allocation)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    from limiter.credits_http import install as install_credits  # imports this module: import late

    install_credits(app, instance)
    from limiter import proxy  # the proxy module imports this one: import late

    proxy.install(app, instance)
    return app
