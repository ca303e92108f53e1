"""Jobs through limiter pods, as job code would run them: acquire a lease, hold it, release it.

Every job is recorded: ``job.queued`` (the acquire is sent), ``job.started`` (the lease is granted:
model, whether the slot was borrowed, seconds waited), ``job.completed`` (released with its usage),
``job.refused`` (a 503 when the wait ended or the queue was full) or ``job.failed`` (anything else:
an error answer, a lost lease on release, a connection error). Loops are bounded in count and time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.e2e.background import BackgroundLoop
from tests.e2e.record import ScenarioRecord


@dataclass
class Job:
    """One job's life."""

    id: int
    pod: str
    job_type: str
    queued: float
    started: float | None = None
    ended: float | None = None
    state: str = "queued"
    lease: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class Jobs:
    """Runs jobs against pods from a :class:`BackgroundLoop`, keeping every :class:`Job`."""

    def __init__(self, loop: BackgroundLoop, record: ScenarioRecord) -> None:
        self.loop = loop
        self.record = record
        self.jobs: list[Job] = []
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._stop: asyncio.Event | None = None
        self._streams: list[concurrent.futures.Future[None]] = []

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Waits for a slot can be long: no total timeout, a bounded connect.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                connector=aiohttp.TCPConnector(limit=0),
            )
        return self._session

    async def run(
        self,
        pod: str,
        url: str,
        job_type: str,
        *,
        hold: float,
        wait: float = 30,
        tokens: int | None = None,
        models: Sequence[str] | None = None,
    ) -> Job:
        """One job on one pod: acquire (waiting up to ``wait`` s), hold ``hold`` s, release."""
        http = await self._http()
        job = Job(next(self._ids), pod, job_type, time.time())
        self.jobs.append(job)
        self.record.event("job.queued", job.queued, job=job.id, pod=pod, jobType=job_type)
        body: dict[str, Any] = {"jobType": job_type, "waitSeconds": wait}
        if models is not None:
            body["models"] = list(models)
        try:
            async with http.post(url + "/api/jobs/acquire", json=body) as resp:
                doc = await resp.json(content_type=None)
                status = resp.status
            if status != 200:
                job.state = "refused" if status == 503 else "failed"
                job.error, job.ended = f"{status}: {doc.get('error', doc)}", time.time()
                self.record.event(f"job.{job.state}", job.ended, job=job.id, pod=pod, error=job.error)
                return job
            job.lease, job.started, job.state = doc, time.time(), "started"
            self.record.event(
                "job.started", job.started, job=job.id, pod=pod, jobType=job_type, model=doc.get("model"),
                borrowed=doc.get("borrowed"), waited=round(job.started - job.queued, 4),
            )  # fmt: skip
            await asyncio.sleep(hold)
            actual = {"tokens": tokens} if tokens is not None else {}
            async with http.post(
                url + f"/api/jobs/{doc['leaseId']}/release", json={"actual": actual}
            ) as resp:
                released = await resp.json(content_type=None)
                if resp.status != 200:
                    raise RuntimeError(f"release answered {resp.status}: {released}")
        except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError) as exc:
            job.state, job.error, job.ended = "failed", str(exc) or type(exc).__name__, time.time()
            self.record.event("job.failed", job.ended, job=job.id, pod=pod, jobType=job_type, error=job.error)
            return job
        job.state, job.ended = "completed", time.time()
        self.record.event(
            "job.completed", job.ended, job=job.id, pod=pod, held=round(job.ended - job.started, 4)
        )
        return job

    def submit(self, pod: Any, job_type: str, **kwargs: Any) -> concurrent.futures.Future[Job]:
        """Start one job (:meth:`run`) on a watched pod (a PodState with ``name`` and ``url``)."""
        return self.loop.submit(self.run(pod.name, pod.url, job_type, **kwargs))

    # -- streams ---------------------------------------------------------------------------------------

    def start_stream(
        self,
        targets: Callable[[], list[tuple[str, str]]],
        job_types: Sequence[str],
        *,
        workers: int,
        hold: tuple[float, float],
        seconds: float,
        wait: float = 30,
        tokens: int | None = None,
        seed: int = 1,
    ) -> Any:
        """``workers`` loops, each running jobs back to back on the pod it picks from ``targets()``
        (name, url), for at most ``seconds``; :meth:`stop_streams` ends them sooner. Returns the
        future of the whole stream."""
        future = self.loop.submit(
            self._stream(targets, job_types, workers, hold, seconds, wait, tokens, seed)
        )
        self._streams.append(future)
        return future

    async def _stream(
        self,
        targets: Callable[[], list[tuple[str, str]]],
        job_types: Sequence[str],
        workers: int,
        hold: tuple[float, float],
        seconds: float,
        wait: float,
        tokens: int | None,
        seed: int,
    ) -> None:
        if self._stop is None:
            self._stop = asyncio.Event()
        stop = self._stop
        deadline = time.monotonic() + seconds

        async def worker(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            while not stop.is_set() and time.monotonic() < deadline:
                choices = targets()
                if not choices:
                    await asyncio.sleep(0.1)
                    continue
                pod, url = choices[i % len(choices)]
                await self.run(
                    pod, url, job_types[i % len(job_types)], hold=rng.uniform(*hold), wait=wait, tokens=tokens
                )

        await asyncio.gather(*(worker(i) for i in range(workers)))

    def stop_streams(self, timeout: float = 60) -> None:
        """Ask every stream to finish its current jobs and end; wait for them (``timeout`` s)."""
        if self._stop is not None and not self.loop.loop.is_closed():
            self.loop.loop.call_soon_threadsafe(self._stop.set)
        for future in self._streams:
            future.result(timeout)
        self._streams.clear()

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def close(self) -> None:
        """End the streams, close the HTTP session (the loop itself belongs to the watch)."""
        if self.loop.loop.is_closed():
            return
        try:
            self.stop_streams()
        finally:
            self.loop.call(self._close(), timeout=10)

    # -- results ---------------------------------------------------------------------------------------

    def counts(self) -> Counter[str]:
        """Jobs by state."""
        return Counter(j.state for j in self.jobs)

    def not_ok(self) -> list[Job]:
        """Jobs that were refused or failed."""
        return [j for j in self.jobs if j.state in ("refused", "failed")]
