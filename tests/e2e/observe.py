"""Watching a fleet while a test acts on it: its pods, what each pod reports, and what Redis publishes.

A :class:`FleetWatch` runs in a background asyncio loop (its own thread, :class:`BackgroundLoop`),
so a test's blocking ``kubectl`` calls never delay a measurement. It keeps three views, each
recorded as events as it changes:

- the policy's pods, listed with kubectl every 0.25 s (``pod.created``, ``pod.started``,
  ``pod.ready``, ``pod.unready``, ``pod.deleting``, ``pod.gone``, ``pod.restarted``);
- every pod's ``/api/debug/allocation``, polled every ``interval`` (``allocation.seen`` when a pod's
  epoch, instance count, generation or slots change; in-flight samples are kept in memory);
- Redis: every allocation record the policy's channel publishes (``allocation.record``, with the
  Redis time of the change) and the members of the instances set (``instance.joined``,
  ``instance.left``), and outages of Redis itself (``redis.down``, ``redis.up``).

How long a change takes to reach the fleet is measured from the Redis time of the record
(``changedAtMs``: on the local cluster Redis runs on the host, so its clock is the host's) to the
first poll at which the last of the pods concerned reports that epoch or a later one. Polls are
``interval`` apart, so a figure overstates the real time by at most that much.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from limiter.redis.keys import PolicyKeys
from tests.e2e.background import BackgroundLoop
from tests.e2e.kube import PodUnreachable, container_pid, is_ready
from tests.e2e.load import Jobs
from tests.e2e.record import ScenarioRecord

T = TypeVar("T")
POLICY_LABEL = "fleetlimiter.io/policy"


@dataclass
class PodState:
    """A pod of the fleet as the watch last listed it."""

    name: str
    uid: str
    first_seen: float
    pod: dict[str, Any] = field(repr=False, default_factory=dict)
    url: str | None = None
    ready: bool = False
    deleting: bool = False
    gone: float | None = None
    started_seen: float | None = None
    ready_seen: float | None = None
    restarts: int = 0

    @property
    def live(self) -> bool:
        """Not being deleted and not gone."""
        return not self.deleting and self.gone is None


@dataclass(frozen=True)
class View:
    """One pod's ``/api/debug/allocation`` at time ``t``."""

    t: float
    epoch: int
    count: int | None
    generation: int
    doc: dict[str, Any] = field(repr=False)

    @property
    def slots(self) -> dict[str, dict[str, int]]:
        """Job type -> model -> slots."""
        return {
            j: {m: int(v["slots"]) for m, v in models.items()}
            for j, models in self.doc.get("slotsByJobTypeAndModel", {}).items()
        }

    @property
    def in_flight(self) -> dict[str, int]:
        """Job type -> jobs in flight."""
        return {j: int(v["inFlight"]) for j, v in self.doc.get("jobTypes", {}).items()}

    def matches(self, plan: dict[str, Any]) -> bool:
        """The pod holds ``plan`` (``fleet-limiter plan --json``): same instance count, pools and slots."""
        return (
            self.doc.get("allocation") == plan["allocation"]
            and self.doc.get("slotsByJobTypeAndModel") == plan["slotsByJobTypeAndModel"]
        )


@dataclass(frozen=True)
class Record:
    """An allocation record as Redis published it."""

    received: float
    epoch: int
    count: int
    generation: int
    changed_at: float
    reason: str


@dataclass(frozen=True)
class Sample:
    """One poll of one pod: generation, in flight per job type, total slots (kept in memory only)."""

    t: float
    pod: str
    generation: int
    in_flight: dict[str, int]
    total_slots: int


class FleetWatch:
    """The pods, allocations and Redis records of one policy, watched in the background."""

    def __init__(
        self,
        env: Any,
        namespace: str,
        policy: str,
        record: ScenarioRecord,
        *,
        interval: float = 0.025,
        pods_interval: float = 0.25,
    ) -> None:
        self.env = env
        self.namespace = namespace
        self.policy = policy
        self.record = record
        self.interval = interval
        self.pods_interval = pods_interval
        self.keys = PolicyKeys(namespace, policy)
        self._lock = threading.Lock()
        self._pods: dict[str, PodState] = {}
        self._views: dict[str, View] = {}
        self._epochs: dict[str, list[tuple[float, int, int | None]]] = {}
        # pod -> epoch -> when the pod says it applied that epoch (its own clock; the same host's)
        self._applied: dict[str, dict[int, float]] = {}
        self._unreachable: set[str] = set()
        self._records: list[Record] = []
        self._members: dict[str, float] = {}
        self._redis_time = 0.0
        self.redis_down = False
        self.samples: list[Sample] = []
        self.loop = BackgroundLoop()
        self._tasks: list[concurrent.futures.Future[None]] = []
        self._jobs: list[Jobs] = []

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> FleetWatch:
        for coro in (self._pods_loop(), self._alloc_loop(), self._redis_loop()):
            self._tasks.append(self.loop.submit(coro))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def jobs(self) -> Jobs:
        """A job runner in the watch's loop, closed with the watch."""
        jobs = Jobs(self.loop, self.record)
        self._jobs.append(jobs)
        return jobs

    def close(self) -> None:
        """Stop watching, and stop the job runners of the watch."""
        try:
            for jobs in self._jobs:
                jobs.close()
        finally:
            self.loop.close()
        for task in self._tasks:
            # A loop that died of an error (not a cancellation) fails the test that relied on it.
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError(f"the fleet watch failed: {task.exception()!r}")

    # -- pods ------------------------------------------------------------------------------------------

    def _list(self) -> list[dict[str, Any]]:
        out = self.env.cluster.kubectl(
            "get", "pods", "-n", self.namespace, "-l", f"{POLICY_LABEL}={self.policy}", "-o", "json"
        )
        items = list(json.loads(out)["items"])
        for pod in items:
            # Resolving an address may start a port-forward: done here, in the worker thread.
            try:
                pod["_url"] = self.env.access.url(pod) if pod.get("status", {}).get("podIP") else None
            except PodUnreachable:
                pod["_url"] = None
        return items

    async def _pods_loop(self) -> None:
        while True:
            try:
                items = await asyncio.to_thread(self._list)
            except (AssertionError, OSError, ValueError) as exc:
                self.record.event("watch.error", source="kubectl", error=str(exc)[:200])
                await asyncio.sleep(1)
                continue
            self._update_pods(items, time.time())
            await asyncio.sleep(self.pods_interval)

    def _update_pods(self, items: list[dict[str, Any]], now: float) -> None:
        seen = set()
        with self._lock:
            for pod in items:
                meta, status = pod["metadata"], pod.get("status") or {}
                name = meta["name"]
                seen.add(name)
                state = self._pods.get(name)
                if state is None or state.uid != meta["uid"]:
                    state = PodState(name=name, uid=meta["uid"], first_seen=now)
                    self._pods[name] = state
                    self.record.event("pod.created", now, pod=name, created=meta.get("creationTimestamp"))
                state.pod, state.url = pod, pod.get("_url") or state.url
                if state.started_seen is None and status.get("phase") == "Running" and status.get("podIP"):
                    state.started_seen = now
                    self.record.event(
                        "pod.started", now, pod=name, ip=status["podIP"], pid=container_pid(pod)
                    )
                ready = is_ready(pod)
                if ready != state.ready:
                    state.ready = ready
                    if ready and state.ready_seen is None:
                        state.ready_seen = now
                    cond = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
                    self.record.event(
                        "pod.ready" if ready else "pod.unready", now, pod=name,
                        transition=cond.get("lastTransitionTime"),
                    )  # fmt: skip
                if meta.get("deletionTimestamp") and not state.deleting:
                    state.deleting = True
                    self.record.event("pod.deleting", now, pod=name)
                restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
                if restarts > state.restarts:
                    state.restarts = restarts
                    last = [
                        (c.get("lastState") or {}).get("terminated") or {}
                        for c in status.get("containerStatuses") or []
                    ]
                    self.record.event(
                        "pod.restarted", now, pod=name, restarts=restarts,
                        reasons=[t.get("reason") for t in last if t],
                    )  # fmt: skip
            for name, state in self._pods.items():
                if name not in seen and state.gone is None:
                    state.gone = now
                    self.record.event("pod.gone", now, pod=name)
            keep = {s.uid for s in self._pods.values() if s.gone is None}
        self.env.access.forget(keep)

    # -- allocations -----------------------------------------------------------------------------------

    async def _alloc_loop(self) -> None:
        timeout = aiohttp.ClientTimeout(total=2, sock_connect=1)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                with self._lock:
                    targets = [(s.name, s.url) for s in self._pods.values() if s.url and s.gone is None]
                await asyncio.gather(*(self._poll(session, name, url) for name, url in targets))
                await asyncio.sleep(self.interval)

    async def _poll(self, session: aiohttp.ClientSession, name: str, url: str) -> None:
        try:
            async with session.get(url + "/api/debug/allocation") as resp:
                doc = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            with self._lock:
                if name not in self._unreachable:
                    self._unreachable.add(name)
                    self.record.event("pod.unreachable", pod=name, error=str(exc)[:120] or type(exc).__name__)
            return
        now = time.time()
        alloc = doc.get("allocation") or {}
        view = View(
            now, int(doc.get("epoch", -1)), alloc.get("instanceCount"), int(doc.get("generation", 0)), doc
        )
        with self._lock:
            self._unreachable.discard(name)
            old = self._views.get(name)
            self._views[name] = view
            self.samples.append(Sample(now, name, view.generation, view.in_flight, _total(view)))
            if old is None or (old.epoch, old.count, old.generation, old.slots) != (
                view.epoch, view.count, view.generation, view.slots,
            ):  # fmt: skip
                self._epochs.setdefault(name, []).append((now, view.epoch, view.count))
            applied = doc.get("epochAppliedAt")
            if isinstance(applied, (int, float)) and view.epoch not in self._applied.setdefault(name, {}):
                self._applied[name][view.epoch] = min(float(applied), now)
                self.record.event(
                    "allocation.seen", now, pod=name, epoch=view.epoch, instanceCount=view.count,
                    generation=view.generation, slots=view.slots,
                )  # fmt: skip

    # -- Redis -----------------------------------------------------------------------------------------

    async def _redis_loop(self) -> None:
        while True:
            try:
                url = await asyncio.to_thread(self.env.redis.url)
            except (AssertionError, OSError, PodUnreachable) as exc:
                self._redis_failed(exc)
                await asyncio.sleep(0.5)
                continue
            client = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self.keys.channel)
                raw = await client.get(self.keys.allocation)
                if raw:
                    self._on_record(raw, time.time())
                if self.redis_down:
                    self.redis_down = False
                    self.record.event("redis.up")
                next_members = 0.0
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                    if msg is not None:
                        self._on_record(msg["data"], time.time())
                    if time.monotonic() >= next_members:
                        members = await client.zrange(self.keys.instances, 0, -1, withscores=True)
                        secs, micros = await client.time()
                        self._on_members({m.decode(): s / 1000 for m, s in members}, secs + micros / 1e6)
                        next_members = time.monotonic() + 0.25
            except (RedisError, OSError) as exc:
                self._redis_failed(exc)
                await asyncio.sleep(0.25)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()

    def _redis_failed(self, exc: BaseException) -> None:
        if not self.redis_down:
            self.redis_down = True
            self.record.event("redis.down", error=str(exc)[:200] or type(exc).__name__)

    def _on_record(self, raw: bytes | str, now: float) -> None:
        data = json.loads(raw)
        rec = Record(
            received=now,
            epoch=int(data["epoch"]),
            count=int(data["instanceCount"]),
            generation=int(data["generation"]),
            changed_at=int(data["changedAtMs"]) / 1000,
            reason=str(data["reason"]),
        )
        with self._lock:
            if any((r.epoch, r.changed_at) == (rec.epoch, rec.changed_at) for r in self._records[-5:]):
                return
            self._records.append(rec)
        self.record.event(
            "allocation.record", now, epoch=rec.epoch, instanceCount=rec.count, generation=rec.generation,
            reason=rec.reason, changedAt=rec.changed_at,
        )  # fmt: skip

    def _on_members(self, members: dict[str, float], redis_time: float) -> None:
        with self._lock:
            old, self._members, self._redis_time = self._members, members, redis_time
        now = time.time()
        for m in sorted(set(members) - set(old)):
            self.record.event("instance.joined", now, instance=m)
        for m in sorted(set(old) - set(members)):
            self.record.event("instance.left", now, instance=m)

    # -- queries (from the test's thread) --------------------------------------------------------------

    def pods(self, *, live: bool = True) -> list[PodState]:
        """The pods listed (live ones: not being deleted, not gone), by name."""
        with self._lock:
            return sorted((s for s in self._pods.values() if s.live or not live), key=lambda s: s.name)

    def ready_pods(self) -> list[PodState]:
        """Live pods whose Ready condition is True."""
        return [p for p in self.pods() if p.ready]

    def views(self) -> dict[str, View]:
        """Each pod's last allocation report."""
        with self._lock:
            return dict(self._views)

    def members(self) -> dict[str, float]:
        """Instance id -> last heartbeat (Unix time, Redis's clock), as last read."""
        with self._lock:
            return dict(self._members)

    def heartbeat_ages(self) -> dict[str, float]:
        """Instance id -> seconds since its last heartbeat, by Redis's clock at that read."""
        with self._lock:
            return {m: self._redis_time - s for m, s in self._members.items()}

    def records(self, since: int = 0) -> list[Record]:
        """Allocation records received, from index ``since`` (see :meth:`mark`)."""
        with self._lock:
            return list(self._records[since:])

    def mark(self) -> int:
        """The index of the next record: what happens after this call."""
        with self._lock:
            return len(self._records)

    def wait(self, what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.02) -> T:
        """Poll ``check`` until it returns something truthy; fail naming ``what`` and the fleet's state."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; {self.describe()}")
            time.sleep(interval)

    def describe(self) -> str:
        """A one-line picture of the fleet, for failure messages."""
        views = self.views()

        def one(p: PodState) -> str:
            view = views.get(p.name)
            reported = f"N={view.count},e={view.epoch}" if view else "?"
            return f"{p.name[-5:]}:{'R' if p.ready else 'r'}{'D' if p.deleting else ''}({reported})"

        pods = ", ".join(one(p) for p in self.pods(live=False) if p.gone is None)
        last = self.records()[-1:] or None
        return f"pods [{pods}], members {sorted(self.members())}, last record {last}"

    def agreed(self, count: int, plan: dict[str, Any]) -> list[PodState] | None:
        """The pods, when exactly ``count`` live pods are ready, are the members of the fleet in Redis,
        and each reports ``plan``; else None."""
        pods = self.pods()
        views = self.views()
        if len(pods) != count or not all(p.ready for p in pods):
            return None
        if set(self.members()) != {p.name for p in pods}:
            return None
        if not all(p.name in views and views[p.name].matches(plan) for p in pods):
            return None
        return pods

    def wait_agreed(self, count: int, plan: dict[str, Any], timeout: float) -> list[PodState]:
        """Until :meth:`agreed`; returns the pods."""
        return self.wait(
            f"{count} pods agreeing on the plan for {count}", lambda: self.agreed(count, plan), timeout
        )

    def first_seen(self, pod: str, epoch: int) -> float | None:
        """When the watch first saw ``pod`` report ``epoch`` or a later one."""
        with self._lock:
            return next((t for t, e, _ in self._epochs.get(pod, []) if e >= epoch), None)

    def seen_before(self, pod: str, t: float) -> bool:
        """Whether the watch had a report of ``pod`` before ``t`` (so its first_seen is a real change)."""
        with self._lock:
            return any(seen < t for seen, _, _ in self._epochs.get(pod, []))

    def reported(self, pod: str, epoch: int, count: int) -> bool:
        """Whether ``pod`` was seen reporting ``epoch`` with ``count`` instances."""
        with self._lock:
            return any((e, n) == (epoch, count) for _, e, n in self._epochs.get(pod, []))

    def first_applied(self, pod: str, epoch: int) -> float | None:
        """When ``pod`` applied ``epoch`` or a later one, by its own report (``epochAppliedAt``, of
        the first such epoch the watch saw); None when it never said."""
        with self._lock:
            seen = next((e for _, e, _ in self._epochs.get(pod, []) if e >= epoch), None)
            return None if seen is None else self._applied.get(pod, {}).get(seen)

    def latency(self, record: Record, pods: list[str], *, polled: bool = False) -> float:
        """Seconds from the record's Redis time until the last of ``pods`` applied it: by the pods'
        own reports (``epochAppliedAt``) when every one gave it, else (or with ``polled``) by the
        poll at which the watch saw it, which adds the poll's delay (a poll round through the API
        server's proxy takes a good part of a second with 20 pods on 2 cores)."""
        seen = [self.first_seen(p, record.epoch) for p in pods]
        missing = [p for p, t in zip(pods, seen, strict=True) if t is None]
        assert not missing, f"{missing} never reported epoch {record.epoch} ({record.reason})"
        applied = [self.first_applied(p, record.epoch) for p in pods]
        times = seen if polled or None in applied else applied
        return max(t for t in times if t is not None) - record.changed_at

    def change(self, since: int, reason: str, count: int) -> tuple[Record, float, list[str]]:
        """The record of a change after mark ``since`` (``join``, ``leave``, ``evict``) to ``count``
        instances, how long the fleet took to agree on it, and the pods that count for that: the live
        pods the watch had seen before the change (a pod that joined learnt the allocation from its
        own registration, and the watch learns of new pods only at its next listing)."""
        rec = self.find(since, reason, count)
        concerned = [p.name for p in self.pods() if self.seen_before(p.name, rec.changed_at)]
        assert concerned, f"no pod was watched before the {reason} at epoch {rec.epoch}"
        return rec, self.latency(rec, concerned), concerned

    def find(self, since: int, reason: str, count: int | None = None) -> Record:
        """The last record after mark ``since`` whose reason contains ``reason`` (and ``count``)."""
        found = [r for r in self.records(since) if reason in r.reason and (count is None or r.count == count)]
        assert found, (
            f"no allocation record with reason {reason!r} (N={count}) since the mark: {self.records(since)}"
        )
        return found[-1]


def _total(view: View) -> int:
    return sum(sum(models.values()) for models in view.slots.values())
