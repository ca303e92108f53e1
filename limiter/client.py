"""A Python client for job code.

::

    async with LimiterClient("http://127.0.0.1:8080") as client:
        async with client.job("summary") as lease:
            result = await call_the_model(lease.model)
            lease.report(tokens=result.usage.total_tokens)

``job()`` acquires a lease (waiting in the job type's queue), runs the block, and releases the
lease with the usage reported, also when the block raises; then the unused part of the estimate
is refunded (or the overage charged) in the same window.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiohttp


class LimiterError(Exception):
    """The limiter refused a request; ``status`` and ``message`` are its answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class NoCapacity(LimiterError):
    """503: no slot within the wait (or the queue is full); retry after ``retry_after`` seconds.

    ``reason`` is the refusal's code (``queue_full``, ``parallel_limit``, ``window_spent``,
    ``memory_limit``, ``not_ready``; docs/proxy.md lists them) and ``limit`` the limit that refused
    (``{"name", "model"?, "jobType"?, "dimension"?, "window"?, "value"?}``), as the instance said."""

    def __init__(
        self,
        status: int,
        message: str,
        retry_after: float,
        reason: str | None = None,
        limit: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status, message)
        self.retry_after = retry_after
        self.reason = reason
        self.limit = limit


@dataclass(slots=True)
class Lease:
    """A held slot: where to run (``model``) and what was reserved."""

    lease_id: str
    model: str
    job_type: str
    reserved: dict[str, int]
    actual: dict[str, int] = field(default_factory=dict)

    def report(self, *, tokens: int | None = None, requests: int | None = None) -> None:
        """Record actual usage; sent when the lease is released."""
        if tokens is not None:
            self.actual["tokens"] = tokens
        if requests is not None:
            self.actual["requests"] = requests


class LimiterClient:
    """Talks to one limiter instance over HTTP (the instance shares the fleet's limits)."""

    def __init__(self, base_url: str, *, session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        return self._session

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self._http().post(self.base_url + path, json=body) as resp:
            text = await resp.text()
            try:
                doc: dict[str, Any] = json.loads(text) if text else {}
            except ValueError:
                doc = {"error": text}
            if resp.status == 503:
                retry = float(resp.headers.get("Retry-After", "1"))
                limit = doc.get("limit")
                raise NoCapacity(
                    resp.status,
                    str(doc.get("error", "no capacity")),
                    retry,
                    str(doc["reason"]) if "reason" in doc else None,
                    limit if isinstance(limit, dict) else None,
                )
            if resp.status >= 400:
                raise LimiterError(resp.status, str(doc.get("error", text)))
            return doc

    async def acquire(
        self,
        job_type: str | None = None,
        *,
        models: Sequence[str] | None = None,
        estimate: dict[str, int] | None = None,
        wait_seconds: float | None = None,
    ) -> Lease:
        """Wait for a lease. Raises :class:`NoCapacity` or :class:`LimiterError`."""
        body: dict[str, Any] = {}
        if job_type is not None:
            body["jobType"] = job_type
        if models is not None:
            body["models"] = list(models)
        if estimate is not None:
            body["estimate"] = estimate
        if wait_seconds is not None:
            body["waitSeconds"] = wait_seconds
        doc = await self._post("/api/jobs/acquire", body)
        return Lease(doc["leaseId"], doc["model"], doc["jobType"], dict(doc["reserved"]))

    async def release(self, lease: Lease) -> dict[str, Any]:
        """Release a lease with the usage reported on it."""
        return await self._post(f"/api/jobs/{lease.lease_id}/release", {"actual": lease.actual})

    @asynccontextmanager
    async def job(
        self,
        job_type: str | None = None,
        *,
        models: Sequence[str] | None = None,
        estimate: dict[str, int] | None = None,
        wait_seconds: float | None = None,
    ) -> AsyncIterator[Lease]:
        """Acquire, run the block, release with the reported usage (also when the block raises)."""
        lease = await self.acquire(job_type, models=models, estimate=estimate, wait_seconds=wait_seconds)
        try:
            yield lease
        except BaseException:
            # Release even when the job failed; a failing release must not hide the job's error
            # (the lease then expires on the instance after leaseTimeoutSeconds).
            with suppress(LimiterError, aiohttp.ClientError, OSError):
                await self.release(lease)
            raise
        await self.release(lease)

    async def allocation(self) -> dict[str, Any]:
        """``GET /api/debug/allocation``."""
        async with self._http().get(self.base_url + "/api/debug/allocation") as resp:
            resp.raise_for_status()
            doc: dict[str, Any] = await resp.json()
            return doc
