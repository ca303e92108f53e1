"""The HTTP toolkit every route of an instance uses (SPEC section 6), on aiohttp.

Every answer is JSON; every error is ``{"error": message, "status": code}`` with the right status:
400 for a bad body, 401 for a missing admin token, 404 for an unknown job type, lease or route, 503
with ``Retry-After`` when no slot can be had (and the refusal's ``reason``, ``limit`` and
``retryAfterSeconds``, :mod:`limiter.core.refusals`), never a traceback. Routes raise the exceptions below
or an :class:`~limiter.core.admission.AdmissionError`, and :func:`errors_as_json` answers them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from limiter.core.admission import AdmissionError
from limiter.core.policy import format_validation_error

log = logging.getLogger("fleet_limiter.http")

T = TypeVar("T", bound=BaseModel)
#: Largest JSON body of the lease, credit and admin routes, in bytes (413 beyond).
MAX_BODY_BYTES = 1 << 20
#: Deepest JSON a body of these routes may nest (theirs nest two or three levels).
MAX_JSON_DEPTH = 16
#: How long a request body may take to arrive, in seconds (``FLEET_LIMITER_BODY_TIMEOUT_SECONDS``).
BODY_TIMEOUT: web.AppKey[float] = web.AppKey("body_timeout", float)
#: The admin token of the app (``--admin-token``); empty: admin endpoints are refused to everyone.
ADMIN_TOKEN: web.AppKey[str] = web.AppKey("admin_token", str)


class BadRequest(Exception):
    """A 400 with a message that names the field."""


class Unauthorized(Exception):
    """A 401: the admin token is missing or wrong."""


class SlowBody(Exception):
    """A 408: the body did not arrive within the body timeout."""


async def read_raw(request: web.Request, limit: int | None = None) -> bytes | None:
    """The body within the app's body timeout (:class:`SlowBody` after it); None when it is larger
    than ``limit`` bytes."""
    seconds = request.app.get(BODY_TIMEOUT, 30.0)
    try:
        async with asyncio.timeout(seconds):
            if limit is None:
                return await request.read()
            if request.content_length is not None and request.content_length > limit:
                return None
            data = bytearray()
            while chunk := await request.content.read(1 << 16):
                data += chunk
                if len(data) > limit:
                    return None
            return bytes(data)
    except TimeoutError:
        raise SlowBody(f"body: not received within {seconds:g} s") from None


def dumps(doc: Any) -> str:
    """Compact JSON for responses."""
    return json.dumps(doc, separators=(",", ":"))


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=dumps(doc), status=status, content_type="application/json", headers=headers)


def json_error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    return json_response({"error": message, "status": status, **extra}, status=status, headers=headers)


def parse_json_object(raw: bytes, *, required: str = "a JSON object is required") -> dict[str, Any]:
    """``raw`` as a JSON object; :class:`BadRequest` naming the body otherwise."""
    if not raw.strip():
        raise BadRequest(f"body: {required}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:  # ValueError: also an integer of > 4300 digits
        raise BadRequest(f"body: not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("body: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest(f"body: expected a JSON object, got {type(data).__name__}")
    return data


async def read_body(request: web.Request, model: type[T], *, optional: bool = False) -> T:
    """Parse and validate a JSON body into ``model``; raise 400 naming the field."""
    raw = await read_raw(request)
    assert raw is not None  # no limit: aiohttp's client_max_size answers 413 itself
    if optional and not raw.strip():
        return model()
    data = parse_json_object(raw)
    if _depth(data) > MAX_JSON_DEPTH:
        raise BadRequest(f"body: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest("; ".join(format_validation_error(exc, prefix=""))) from None


def _depth(doc: Any) -> int:
    """How deeply ``doc`` nests (a scalar is 0), without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= MAX_JSON_DEPTH:
            stack.extend((child, level + 1) for child in children)
    return deepest


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None without one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def require_admin(request: web.Request) -> None:
    """Admin endpoints need ``Authorization: Bearer <admin token>`` (``--admin-token`` or
    ``FLEET_LIMITER_ADMIN_TOKEN``); without a configured token they are refused to everyone."""
    token = request.app.get(ADMIN_TOKEN, "")
    if not token:
        raise Unauthorized("admin endpoints are disabled: start the instance with --admin-token")
    given = bearer_token(request) or ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("Authorization: a valid 'Bearer <admin token>' header is required")


def retry_after(seconds: float) -> dict[str, str]:
    """The ``Retry-After`` header for a wait of ``seconds`` (whole seconds, at least 1)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def admission_error(exc: AdmissionError) -> web.Response:
    """The JSON answer of a refused acquire: ``error``, ``status`` and, for a refusal, the fields of
    :meth:`limiter.core.refusals.Refusal.to_json` and its ``Retry-After`` headers."""
    if exc.refusal is not None:
        return json_error(exc.status, exc.message, exc.refusal.headers(), **exc.refusal.to_json())
    return json_error(exc.status, exc.message, retry_after(exc.retry_after) if exc.status == 503 else None)


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
    except SlowBody as exc:
        return json_error(408, str(exc), {"Connection": "close"})
    except AdmissionError as exc:
        return admission_error(exc)
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
