"""Forwarding one admitted request to its model's upstream LLM server, with aiohttp's client.

Streams pass through chunk by chunk: the next chunk is read from the upstream only after the
last one was written to the client (``await write`` waits while the client's socket is full),
so a slow client slows the upstream instead of filling the proxy's memory.

Upstream API keys come from the environment, never from the policy and never into a log: a model
with ``upstream.apiKeyEnv`` reads that variable; one with ``upstream.apiKeySecretRef`` reads
``FLEET_LIMITER_UPSTREAM_KEY_<MODEL>`` (see :func:`limiter.core.policy.upstream_key_env`), where
the operator mounts the Secret's key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from limiter.core.policy import ModelSpec, upstream_key_env
from limiter.proxy.wire import Api, NdjsonRelay, Route, SseRelay, usage_from_json
from limiter.web.toolkit import dumps

#: Response headers passed from the upstream to the client (others are the proxy's own business).
PASSED_HEADERS = ("content-type", "retry-after", "x-request-id")
PASSED_PREFIXES = ("x-ratelimit-", "openai-")
#: How much of an upstream's 5xx body a 502 quotes.
QUOTE_BYTES = 300


class UpstreamKeyMissing(Exception):
    """The policy says the upstream needs a key, and its environment variable is not set."""

    def __init__(self, variable: str) -> None:
        super().__init__(variable)
        self.variable = variable


def api_key(model: ModelSpec, env: Mapping[str, str] | None = None) -> str | None:
    """The upstream's API key, None when it needs none; raises :class:`UpstreamKeyMissing`."""
    upstream = model.upstream
    if upstream is None:
        return None
    if upstream.api_key_env:
        variable = upstream.api_key_env
    elif upstream.api_key_secret_ref is not None:
        variable = upstream_key_env(model.name)
    else:
        return None
    value = (os.environ if env is None else env).get(variable)
    if not value:
        raise UpstreamKeyMissing(variable)
    return value


def target_url(base: str, path: str) -> str:
    """The upstream URL for a proxied path: the base URL and the path, without doubling a ``/v1``
    that the base already ends with (``https://api.example/v1`` + ``/v1/embeddings``)."""
    base = base.rstrip("/")
    if base.endswith("/v1") and path.startswith("/v1/"):
        return base + path[3:]
    return base + path


def shown_url(url: str) -> str:
    """A URL fit for error messages and logs: without user info (which may hold a password)."""
    return str(URL(url).with_user(None))


@dataclass(slots=True)
class Forwarded:
    """What forwarding produced."""

    response: web.StreamResponse
    outcome: str
    """ok, upstream_4xx, upstream_429, upstream_error (5xx or broken stream), timeout, unreachable."""
    reached: bool
    """Whether the upstream got the request (it then counts against its request limits)."""
    tokens: int | None = None
    """Tokens the answer reports using; None when it does not say."""
    streamed: bool = False
    """Whether an answer streamed to the client (tokens were generated, even if it broke)."""

    def actual(self) -> dict[str, int]:
        """Usage to settle the lease with. Where the answer does not say, the estimate stands
        (``tokens`` left out) for what may have generated tokens: a success, a timeout, a stream;
        an error answer or an unreachable upstream used none."""
        out = {"requests": 1 if self.reached else 0}
        if self.tokens is not None:
            out["tokens"] = self.tokens
        elif not self.streamed and self.outcome not in ("ok", "timeout"):
            out["tokens"] = 0
        return out


ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    413: "invalid_request_error",
    502: "upstream_error",
    503: "overloaded_error",
    504: "upstream_timeout",
}


def error_response(
    api: Api, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    """A JSON error in the client's wire format: OpenAI's ``{"error": {"message", "type", "code"}}``
    (what OpenAI SDKs show in their exceptions) or Ollama's ``{"error": message}``; both with
    ``status``."""
    error: Any = message
    if api == "openai":
        error = {"message": message, "type": ERROR_TYPES.get(status, "error"), "code": status}
    return web.Response(
        text=dumps({"error": error, "status": status, **extra}),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _passed_headers(up: aiohttp.ClientResponse, content_type: bool = True) -> dict[str, str]:
    return {
        k: v
        for k, v in up.headers.items()
        if (k.lower() in PASSED_HEADERS or k.lower().startswith(PASSED_PREFIXES))
        and (content_type or k.lower() != "content-type")
    }


async def forward(
    session: aiohttp.ClientSession,
    request: web.Request,
    route: Route,
    model: ModelSpec,
    payload: bytes,
    *,
    key: str | None,
    stream: bool,
    strip_usage: bool,
    extra_headers: Mapping[str, str] | None = None,
) -> Forwarded:
    """Send ``payload`` to the model's upstream and answer the client. Upstream failures become
    502 (refused, reset, 5xx) or 504 (timeout) JSON errors; a stream that breaks after it started
    ends with an error event in the client's wire format. Writing to a client that went away
    raises (``ConnectionResetError``, or ``CancelledError`` with handler cancellation).
    ``extra_headers`` go on a 2xx answer (streamed too: before its first byte), over the upstream's."""
    assert model.upstream is not None
    upstream = model.upstream
    url = target_url(upstream.url, route.path)
    where = f"upstream {shown_url(url)} of model '{model.name}'"
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    timeout = aiohttp.ClientTimeout(total=upstream.timeout_seconds)
    try:
        async with session.post(url, data=payload, headers=headers, timeout=timeout) as up:
            if stream and up.status == 200:
                return await _relay(request, up, route, where, strip_usage, extra_headers or {})
            raw = await up.read()
    except TimeoutError:
        message = f"{where} did not answer within {upstream.timeout_seconds:g} s (upstream.timeoutSeconds)"
        return Forwarded(error_response(route.api, 504, message), "timeout", reached=True)
    except aiohttp.ClientConnectorError as exc:
        reason = exc.strerror or exc.__class__.__name__
        return Forwarded(
            error_response(route.api, 502, f"cannot connect to {where}: {reason}"),
            "unreachable",
            reached=False,
        )
    except aiohttp.ClientError as exc:
        message = f"{where} closed the connection before answering ({exc.__class__.__name__})"
        return Forwarded(error_response(route.api, 502, message), "upstream_error", reached=True)
    if up.status >= 500:
        quote = raw[:QUOTE_BYTES].decode("utf-8", "replace")
        message = f"{where} answered {up.status}: {quote}"
        return Forwarded(
            error_response(route.api, 502, message, _passed_headers(up, content_type=False)),
            "upstream_error",
            reached=True,
        )
    response = web.Response(body=raw, status=up.status, headers=_passed_headers(up))
    if 200 <= up.status < 300:
        response.headers.update(extra_headers or {})
    if up.status == 429:
        return Forwarded(response, "upstream_429", reached=True)
    if up.status >= 400:
        return Forwarded(response, "upstream_4xx", reached=True)
    return Forwarded(response, "ok", reached=True, tokens=usage_from_json(route, raw))


async def _relay(
    request: web.Request,
    up: aiohttp.ClientResponse,
    route: Route,
    where: str,
    strip_usage: bool,
    extra_headers: Mapping[str, str],
) -> Forwarded:
    """Pass a 200 stream through, reading its usage on the way."""
    relay: SseRelay | NdjsonRelay = (
        SseRelay(strip_usage, responses=route.kind == "response") if route.api == "openai" else NdjsonRelay()
    )
    response = web.StreamResponse(status=200, headers=_passed_headers(up))
    response.headers.update(extra_headers)
    response.headers.setdefault(
        "Content-Type", "text/event-stream" if route.api == "openai" else "application/x-ndjson"
    )
    await response.prepare(request)
    broken: str | None = None
    while True:
        try:
            chunk = await up.content.readany()
        except TimeoutError:
            broken = f"{where} timed out in the middle of the stream"
            break
        except aiohttp.ClientError as exc:
            broken = f"{where} broke the stream ({exc.__class__.__name__})"
            break
        if not chunk:
            break
        out = relay.feed(chunk)
        try:
            if out:
                await response.write(out)
        except ConnectionResetError:  # the client went away (without handler cancellation)
            return Forwarded(response, "client_gone", reached=True, tokens=relay.tokens, streamed=True)
    rest = relay.finish()
    if broken is not None:
        # Headers are gone already: the client learns of the failure in its own wire format.
        if isinstance(relay, SseRelay):
            rest += relay.error_event(broken)
        else:
            rest += json.dumps({"error": broken}).encode() + b"\n"
    try:
        if rest:
            await response.write(rest)
        await response.write_eof()
    except ConnectionResetError:
        return Forwarded(response, "client_gone", reached=True, tokens=relay.tokens, streamed=True)
    outcome = "ok" if broken is None else "upstream_error"
    return Forwarded(response, outcome, reached=True, tokens=relay.tokens, streamed=True)
