"""Blocking HTTP calls to the instances under test (urllib: no client library, no pooled
connection that could outlive a test)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def bearer(token: str | None) -> dict[str, str]:
    """An ``Authorization: Bearer`` header, or none when ``token`` is None."""
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


def http(
    method: str,
    url: str,
    body: Any = None,
    timeout: float = 10.0,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """One HTTP call: (status, decoded JSON or text, headers). ``body`` is sent as JSON unless it
    is bytes already; ``token`` adds a bearer token. Error statuses are answers, not exceptions."""
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    sent = {"Content-Type": "application/json", **bearer(token), **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status, answer_headers = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, answer_headers = exc.read(), exc.code, dict(exc.headers)
    try:
        return status, json.loads(raw), answer_headers
    except ValueError:
        return status, raw.decode(), answer_headers
