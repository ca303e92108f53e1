"""The credits handlers in process: an unexpected failure is a JSON 500 whose log line names the
key by its fingerprint only (the app's middleware would log the path, which holds the key)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from limiter.web import credits as credits_http
from limiter.web.toolkit import errors_as_json


class Broken:
    """Stands in for a CreditStore whose every call hits a bug."""

    async def consume(self, *args: Any) -> None:
        raise RuntimeError("a bug")


async def test_an_unexpected_error_never_logs_the_key(caplog: pytest.LogCaptureFixture) -> None:
    app = web.Application(middlewares=[errors_as_json])
    app[credits_http.CREDITS] = Broken()  # type: ignore[assignment]
    app.router.add_post("/api/keys/{key}/consume", credits_http.consume)
    key = "sk-very-secret-key-0123456789"
    async with TestClient(TestServer(app)) as client:
        with caplog.at_level(logging.ERROR):
            resp = await client.post(f"/api/keys/{key}/consume", json={"cost": 1})
            assert resp.status == 500
            assert (await resp.json())["error"].startswith("internal error")
            bad = await client.post(f"/api/keys/{key}/consume", json={"cost": 0})
            assert bad.status == 400  # bad input still reaches the app's middleware
    assert "credits: consume on key sha256:" in caplog.text
    assert key not in caplog.text
