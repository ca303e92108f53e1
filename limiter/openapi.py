"""The OpenAPI 3.1 document of an instance's HTTP API, built from the same pydantic models that
validate the request bodies, so the document cannot drift from what the routes accept.

Served at ``GET /openapi.json`` (:mod:`limiter.app`) and checked in as ``docs/openapi.json``
(``make docs`` writes it; a test fails when it is stale). The proxy's OpenAI and Ollama routes are
described by what the proxy itself reads (``model``, and the fields that size a reservation); the
rest of their bodies goes to the upstream as it is.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from limiter.core.refusals import CAPACITY_REASONS
from limiter.proxy.queue_api import QueueUpdateBody
from limiter.proxy.wire import MAX_CHOICES, MAX_OUTPUT_TOKENS, ROUTES
from limiter.web.credits import ConsumeBody, PutBody, ReserveBody, SettleBody
from limiter.web.leases import AcquireBody, ReleaseBody

VERSION = "0.1.0"
_REF = "#/components/schemas/{model}"

ERROR = {
    "type": "object",
    "required": ["error", "status"],
    "properties": {
        "error": {"description": "What is wrong, naming the field", "type": "string"},
        "status": {"type": "integer"},
    },
}
REFUSAL = {
    "description": "An Error that names the limit that refused (docs/proxy.md, Refusals)",
    "allOf": [{"$ref": "#/components/schemas/Error"}],
    "properties": {
        "reason": {"type": "string", "enum": [r.value for r in CAPACITY_REASONS]},
        "limit": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {
                    "type": "string",
                    "description": "tokensPerMinute, slots, maxWaiting, queue_limit, ...",
                },
                "model": {"type": "string"},
                "jobType": {"type": "string"},
                "dimension": {"type": "string", "enum": ["tokens", "requests"]},
                "window": {"type": "string", "enum": ["minute", "day"]},
                "value": {"type": "integer"},
            },
        },
        "retryAfterSeconds": {
            "type": ["integer", "null"],
            "minimum": 1,
            "description": "The Retry-After header's value; null when the limit does not free by itself",
        },
        "position": {"type": "integer", "minimum": 1, "description": "Queued work: its place in the queue"},
        "estimatedStartSeconds": {"type": "number", "minimum": 0},
    },
}
RETRY_HEADERS = {
    "Retry-After": {"description": "Whole seconds until the limit frees", "schema": {"type": "integer"}},
    "retry-after-ms": {
        "description": "The same in milliseconds (OpenAI SDKs read it)",
        "schema": {"type": "integer"},
    },
}
#: Headers of a lease grant or a proxied 2xx answer, for the model's minute limits (absent without them).
RATE_LIMIT_HEADERS = {
    **{
        f"x-ratelimit-{what}-{dim}": {
            "description": f"OpenAI-style {what} of the {dim} per minute",
            "schema": {"type": "string"},
        }
        for dim in ("requests", "tokens")
        for what in ("limit", "remaining", "reset")
    },
    "RateLimit-Policy": {
        "description": "draft-ietf-httpapi-ratelimit-headers-10",
        "schema": {"type": "string"},
    },
    "RateLimit": {"description": "draft-ietf-httpapi-ratelimit-headers-10", "schema": {"type": "string"}},
}
PROXY_BODY = {
    "type": "object",
    "required": ["model"],
    "description": "The OpenAI or Ollama body; the proxy reads these fields and forwards the body as is.",
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "messages": {"type": "array"},
        "stream": {"type": "boolean"},
        "max_tokens": {"type": "integer", "minimum": 0, "maximum": MAX_OUTPUT_TOKENS},
        "max_completion_tokens": {"type": "integer", "minimum": 0, "maximum": MAX_OUTPUT_TOKENS},
        "n": {"type": "integer", "minimum": 1, "maximum": MAX_CHOICES},
        "input": {"type": ["string", "array"]},
        "instructions": {"type": "string"},
        "max_output_tokens": {"type": "integer", "minimum": 0, "maximum": MAX_OUTPUT_TOKENS},
        "options": {"type": "object"},
    },
}


def _schemas(models: list[type[BaseModel]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF, mode="validation")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Bad input: the message names the field and what is valid",
        401: "The admin token is missing or wrong",
        404: "Unknown job type, lease, key, model or route",
        409: "A request id reused with other parameters",
        413: "Body too large",
        429: "The key's credits do not cover it (reason credits_exhausted)",
        503: "No capacity now, or not ready: the reason, the limit and Retry-After",
    }
    out = {}
    for s in statuses:
        if s in (429, 503):
            out[str(s)] = {
                **_json({"$ref": "#/components/schemas/Refusal"}, text[s]),
                "headers": _header_refs(RETRY_HEADERS),
            }
        else:
            out[str(s)] = _json({"$ref": "#/components/schemas/Error"}, text[s])
    return out


def _header_refs(headers: dict[str, Any]) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in headers}


def _operation(
    summary: str,
    body: dict[str, Any] | None = None,
    ok: str = "OK",
    errors: tuple[int, ...] = (),
    *,
    admin: bool = False,
    optional_body: bool = False,
    rate_limited: bool = False,
) -> dict[str, Any]:
    answer = _json({"type": "object"}, ok)
    if rate_limited:
        answer["headers"] = _header_refs(RATE_LIMIT_HEADERS)
    op: dict[str, Any] = {"summary": summary, "responses": {"200": answer, **_errors(*errors)}}
    if body is not None:
        op["requestBody"] = {"required": not optional_body, "content": {"application/json": {"schema": body}}}
    if admin:
        op["security"] = [{"adminToken": []}]
    return op


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the limiter's HTTP API."""
    key = _path_param("key", "The API key whose credits these are")
    paths: dict[str, Any] = {
        "/api/jobs/acquire": {
            "post": _operation(
                "Wait for a lease of a job type",
                _ref(AcquireBody),
                "The lease: leaseId, model, jobType, reserved, borrowed, instanceId",
                (400, 404, 413, 503),
                rate_limited=True,
            )
        },
        "/api/jobs/{leaseId}/release": {
            "parameters": [_path_param("leaseId", "The lease to end")],
            "post": _operation(
                "End a lease with its actual usage",
                _ref(ReleaseBody),
                "Released: refunded and charged per window limit",
                (400, 404, 413),
                optional_body=True,
            ),
        },
        "/api/debug/allocation": {"get": _operation("This instance's allocation and leases")},
        "/health": {"get": _operation("Liveness, Redis state and the concurrency section")},
        "/ready": {"get": _operation("200 when joined to the fleet with Redis reachable", errors=(503,))},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (fleet_limiter_*)",
                "responses": {
                    "200": {"description": "Text exposition format", "content": {"text/plain": {}}}
                },
            }
        },
        "/openapi.json": {"get": _operation("This document")},
        "/api/keys/{key}": {
            "parameters": [key],
            "put": _operation(
                "Create or replace a key's budget", _ref(PutBody), errors=(400, 401), admin=True
            ),
            "get": _operation("A key's budget", errors=(401, 404), admin=True),
            "delete": _operation("Forget a key's budget", errors=(401, 404), admin=True),
        },
        "/api/keys/{key}/consume": {
            "parameters": [key],
            "post": _operation(
                "Spend credits, all or nothing", _ref(ConsumeBody), errors=(400, 404, 409, 429)
            ),
        },
        "/api/keys/{key}/reservations": {
            "parameters": [key],
            "post": _operation("Reserve an estimate", _ref(ReserveBody), errors=(400, 404, 409, 429)),
        },
        "/api/keys/{key}/reservations/{reservationId}/settle": {
            "parameters": [key, _path_param("reservationId", "The reservation to settle")],
            "post": _operation(
                "Settle a reservation with the actual cost", _ref(SettleBody), errors=(400, 404)
            ),
        },
        "/queue/stats": {
            "get": {
                **_operation("The proxy's queues per model", errors=(404,)),
                "parameters": [
                    {"name": "model", "in": "query", "required": False, "schema": {"type": "string"}}
                ],
            }
        },
        "/queue/memory": {"get": _operation("Memory as the container sees it, and recommended_parallel")},
        "/v1/models": {"get": _operation("The proxied models, in OpenAI's list shape", errors=(404,))},
        "/v1/models/{model}": {
            "parameters": [_path_param("model", "A proxied model")],
            "get": _operation("One proxied model, in OpenAI's shape", errors=(404,)),
        },
        "/api/tags": {"get": _operation("The proxied models with an Ollama upstream, in Ollama's shape")},
        "/api/ps": {"get": _operation("The Ollama models with requests running or queued on this instance")},
        "/api/version": {"get": _operation("The Ollama API version the proxy speaks")},
        "/": {"get": _operation("The Ollama heartbeat: 'Ollama is running' (text)")},
        "/admin/queue/update": {
            "post": _operation(
                "Lower a model's parallel_limit or set its queue_limit on this instance",
                _ref(QueueUpdateBody),
                errors=(400, 401, 404),
                admin=True,
            )
        },
    }
    for route in ROUTES:
        paths[route.path] = {
            "post": {
                **_operation(
                    f"Proxied {route.api} {route.kind} request (takes a lease, forwards, settles)",
                    PROXY_BODY,
                    "The upstream's answer (JSON, or a stream of SSE / NDJSON events)",
                    (400, 401, 404, 413, 429, 503),
                    rate_limited=True,
                ),
                "parameters": [
                    {"name": "X-Job-Type", "in": "header", "required": False, "schema": {"type": "string"}}
                ],
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fleet-limiter",
            "version": VERSION,
            "description": "Leases, credit budgets and the LLM proxy of one limiter instance (SPEC 6).",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": ERROR,
                "Refusal": REFUSAL,
                **_schemas(
                    [AcquireBody, ReleaseBody, PutBody, ConsumeBody, ReserveBody, SettleBody, QueueUpdateBody]
                ),
            },
            "headers": {**RETRY_HEADERS, **RATE_LIMIT_HEADERS},
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }
