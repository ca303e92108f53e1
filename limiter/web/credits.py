"""HTTP routes of credit budgets per API key (SPEC section 6), installed by :func:`install`.

Admin routes (``PUT``, ``GET``, ``DELETE /api/keys/{key}``) need the admin token. Spending routes
(consume, reserve, settle) need nothing but the key in the path: whoever holds a key may spend its
credits, which is all the key is for (threat model in docs/credits.md). Answers are JSON; errors
are ``{"error", "status"}`` as everywhere else, and a refusal for lack of credits is a 429 with
``{"allowed": false, "remaining", "nextRefillSeconds"?}`` plus the refusal's ``reason``
(``credits_exhausted``), ``limit`` and ``retryAfterSeconds`` (:mod:`limiter.core.refusals`), and
``Retry-After`` when a refill is due.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from limiter.core.credits import (
    DEFAULT_RESERVATION_TTL_SECONDS,
    MAX_CREDITS,
    MAX_RESERVATION_TTL_SECONDS,
    MAX_SECONDS,
    CreditError,
    Refill,
    UnknownKey,
    fingerprint,
)
from limiter.core.refusals import credits_refusal, not_ready
from limiter.redis.creditstore import CreditStore
from limiter.redis.keys import credit_key_id
from limiter.redis.plumbing import StoreUnavailable
from limiter.web.toolkit import (
    BadRequest,
    Unauthorized,
    json_error,
    json_response,
    read_body,
    require_admin,
)

log = logging.getLogger("fleet_limiter.credits")

#: The instance's credit store (the composition root, :func:`limiter.app.build_app`, makes it).
CREDITS: web.AppKey[CreditStore] = web.AppKey("credits", CreditStore)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Body(BaseModel):
    # strict: 5.0, "5" and true are not a cost of 5.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class RefillBody(_Body):
    amount: int = Field(ge=1, le=MAX_CREDITS)
    every_seconds: int = Field(alias="everySeconds", ge=1, le=MAX_SECONDS)


class PutBody(_Body):
    credits: int = Field(ge=0, le=MAX_CREDITS)
    refill: RefillBody | None = None
    expires_in_seconds: int | None = Field(default=None, alias="expiresInSeconds", ge=1, le=MAX_SECONDS)


class ConsumeBody(_Body):
    cost: int = Field(ge=1, le=MAX_CREDITS)
    request_id: str | None = Field(default=None, alias="requestId")


class ReserveBody(_Body):
    amount: int = Field(ge=1, le=MAX_CREDITS)
    request_id: str | None = Field(default=None, alias="requestId")
    ttl_seconds: int = Field(
        default=DEFAULT_RESERVATION_TTL_SECONDS, alias="ttlSeconds", ge=1, le=MAX_RESERVATION_TTL_SECONDS
    )


class SettleBody(_Body):
    actual: int = Field(ge=0, le=MAX_CREDITS)


def _credit_errors(handler: Handler) -> Handler:
    """Map credits errors to their status; an unreachable Redis is a 503 the client may retry."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except CreditError as exc:
            return json_error(exc.status, exc.message)
        except StoreUnavailable as exc:
            refusal = not_ready(f"credits are unavailable: {exc}", limit="credits")
            return json_error(503, f"credits are unavailable: {exc}", refusal.headers(), **refusal.to_json())
        except (BadRequest, Unauthorized, web.HTTPException):
            raise  # the app's middleware answers these
        except Exception:
            # The app's middleware would log the path, and the path holds the API key.
            key = fingerprint(credit_key_id(request.match_info.get("key", "")))
            log.exception("credits: %s on key %s failed", handler.__name__, key)
            return json_error(500, "internal error; see the instance's log")

    return wrapped


def _refused(doc: dict[str, Any]) -> web.Response:
    """A 429 for lack of credits: the answer's fields plus the refusal's (``reason``
    ``credits_exhausted``, ``limit``, ``retryAfterSeconds``), ``Retry-After`` when a refill is due."""
    refusal = credits_refusal(int(doc["remaining"]), doc.get("nextRefillSeconds"))
    return json_response({**doc, **refusal.to_json()}, status=429, headers=refusal.headers() or None)


def _store(request: web.Request) -> CreditStore:
    return request.app[CREDITS]


@_credit_errors
async def put_key(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    body = await read_body(request, PutBody)
    refill = Refill(body.refill.amount, body.refill.every_seconds) if body.refill else None
    state, created = await _store(request).put(
        request.match_info["key"], body.credits, refill, body.expires_in_seconds
    )
    return json_response({**state.to_json(), "created": created}, status=201 if created else 200)


@_credit_errors
async def get_key(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    state = await _store(request).get(request.match_info["key"])
    return json_response(state.to_json())


@_credit_errors
async def delete_key(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    key = request.match_info["key"]
    if not await _store(request).delete(key):
        raise UnknownKey.of(credit_key_id(key))
    return json_response({"deleted": True})


@_credit_errors
async def consume(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, ConsumeBody)
    answer = await _store(request).consume(request.match_info["key"], body.cost, body.request_id)
    doc: dict[str, Any] = answer.to_json()
    if answer.allowed:
        return json_response(doc)
    return _refused(doc)


@_credit_errors
async def reserve(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, ReserveBody)
    answer = await _store(request).reserve(
        request.match_info["key"], body.amount, body.request_id, body.ttl_seconds
    )
    doc = answer.to_json()
    if answer.allowed:
        return json_response(doc)
    return _refused(doc)


@_credit_errors
async def settle(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, SettleBody)
    answer = await _store(request).settle(
        request.match_info["key"], request.match_info["reservation_id"], body.actual
    )
    return json_response(answer.to_json())


def install(app: web.Application, store: CreditStore) -> None:
    """Add the ``/api/keys`` routes of ``store`` to ``app``."""
    app[CREDITS] = store
    app.router.add_put("/api/keys/{key}", put_key)
    app.router.add_get("/api/keys/{key}", get_key)
    app.router.add_delete("/api/keys/{key}", delete_key)
    app.router.add_post("/api/keys/{key}/consume", consume)
    app.router.add_post("/api/keys/{key}/reservations", reserve)
    app.router.add_post("/api/keys/{key}/reservations/{reservation_id}/settle", settle)
