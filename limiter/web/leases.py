"""The lease routes of an instance (SPEC section 6): acquire, release, the allocation, health, ready."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from limiter.core.policy import MAX_AMOUNT, MAX_MEMORY_KB
from limiter.core.ratelimit import minute_windows, rate_limit_headers
from limiter.fleet.instance import LimiterInstance
from limiter.web.toolkit import json_response, read_body

INSTANCE: web.AppKey[LimiterInstance] = web.AppKey("instance", LimiterInstance)
#: The ``concurrency`` section of ``/health`` (the proxy's numbers), wired by the composition root.
CONCURRENCY: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("concurrency")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class EstimateBody(_Body):
    tokens: int | None = Field(default=None, ge=0, le=MAX_AMOUNT)
    requests: int | None = Field(default=None, ge=0, le=MAX_AMOUNT)
    memory_kb: int | None = Field(default=None, ge=0, le=MAX_MEMORY_KB, alias="memoryKB")

    def as_dict(self) -> dict[str, int]:
        raw = {"tokens": self.tokens, "requests": self.requests, "memoryKB": self.memory_kb}
        return {k: v for k, v in raw.items() if v is not None}


class AcquireBody(_Body):
    job_type: str | None = Field(default=None, alias="jobType", min_length=1)
    models: list[str] | None = Field(default=None, min_length=1)
    estimate: EstimateBody | None = None
    wait_seconds: float | None = Field(default=None, alias="waitSeconds", ge=0, le=86400)


class ActualBody(_Body):
    tokens: int | None = Field(default=None, ge=0, le=MAX_AMOUNT)
    requests: int | None = Field(default=None, ge=0, le=MAX_AMOUNT)


class ReleaseBody(_Body):
    actual: ActualBody | None = None


def model_rate_limit_headers(instance: LimiterInstance, model: str | None) -> dict[str, str]:
    """The rate-limit headers of ``model``'s minute limits as ``instance`` sees them now
    (:mod:`limiter.core.ratelimit`); empty before the instance has joined or for a model without
    minute limits."""
    grants = instance.grants
    if grants is None or model is None:
        return {}
    return rate_limit_headers(minute_windows(grants.ledger, model, grants.seen, instance.clock.now()))


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
        },
        headers=model_rate_limit_headers(inst, ticket.model),
    )


async def release(request: web.Request) -> web.Response:
    body = await read_body(request, ReleaseBody, optional=True)
    actual = body.actual.model_dump(exclude_none=True) if body.actual else None
    result = await request.app[INSTANCE].release(request.match_info["lease_id"], actual)
    return json_response(result)


async def debug_allocation(request: web.Request) -> web.Response:
    return json_response(request.app[INSTANCE].debug_allocation())


async def health(request: web.Request) -> web.Response:
    doc = request.app[INSTANCE].health()
    doc["concurrency"] = request.app[CONCURRENCY]()
    return json_response(doc)


async def ready(request: web.Request) -> web.Response:
    ok, reason = request.app[INSTANCE].ready()
    return json_response({"ready": ok, "reason": reason}, status=200 if ok else 503)


def install(
    app: web.Application, instance: LimiterInstance, concurrency: Callable[[], dict[str, Any]]
) -> None:
    """Add the lease routes of ``instance``; ``concurrency`` gives ``/health``'s concurrency section."""
    app[INSTANCE] = instance
    app[CONCURRENCY] = concurrency
    app.router.add_post("/api/jobs/acquire", acquire)
    app.router.add_post("/api/jobs/{lease_id}/release", release)
    app.router.add_get("/api/debug/allocation", debug_allocation)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
