"""One limiter instance at run time: the pure core wired to Redis.

The instance registers in the fleet, heartbeats, follows the allocation (pushed on the policy's
channel and read back with every heartbeat), reloads new policy generations live, and serves
leases through the :class:`~limiter.core.admission.JobTypeManager`. Window budgets are granted by the
fleet's counters in Redis and spent locally (:class:`~limiter.core.budgets.BudgetLedger` in granted
mode): a job that fits in what the instance holds needs no Redis round trip, an instance draws
more when it runs short, and hands back what it did not use on every heartbeat.

When Redis is unavailable the instance keeps admitting only within the slots and grants it already
holds (never beyond a limit), reports unready, and re-registers and reconciles when Redis returns.

Every heartbeat also reports what this instance's clients hold (a
:class:`~limiter.core.membership.LeaseReport`). Should the instance vanish, Redis keeps that report as
its ghost, and every instance takes the ghosts' leases (the allocation record's ``held``) off the
models' capacity before dividing it, until those leases time out or this process re-joins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from limiter.core.admission import (
    AdmissionError,
    JobTypeManager,
    NoCapacity,
    NotReady,
    QueueFull,
    Ticket,
    UnknownLease,
)
from limiter.core.allocation import Allocation, Held, compute_allocation
from limiter.core.budgets import usage_problems
from limiter.core.clock import SystemClock
from limiter.core.membership import AllocationRecord, LeaseReport, MembershipReply, lease_report
from limiter.core.policy import PolicySpec
from limiter.core.refusals import Limit, Refusal, RefusalReason
from limiter.core.shadow import ShadowCounts
from limiter.core.stats import REDIS_BUCKETS, AcquireStats, Histogram
from limiter.fleet.grants import GrantKeeper
from limiter.fleet.memory import default_budget_kb
from limiter.fleet.settings import ServeSettings
from limiter.redis.fleetstore import AllocationSubscription, Pull, RedisStore
from limiter.redis.plumbing import StoreUnavailable

log = logging.getLogger("fleet_limiter.instance")

#: A job that asked not to wait still waits this long, in seconds, when only the budget draw (one
#: Redis round trip) stands between it and a free slot.
DRAW_GRACE = 2.0


@dataclass(slots=True)
class RedisHealth:
    """What the instance knows about its Redis connection."""

    connected: bool = False
    error: str | None = None
    since: float = 0.0
    errors: int = 0
    last_latency_seconds: float = 0.0


class LimiterInstance:
    """A limiter instance: leases for job code, following the fleet through Redis."""

    def __init__(
        self,
        settings: ServeSettings,
        store: RedisStore,
        spec: PolicySpec | None,
        *,
        clock: SystemClock | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock or SystemClock()
        self.instance_id = settings.instance_id
        self.incarnation = secrets.token_hex(8)
        """This process among all that ever used :attr:`instance_id` (its ghost's name in Redis)."""
        self.file_spec = spec
        self.spec: PolicySpec | None = None
        self.generation = 0
        self.instance_count = 1
        """The instance count the allocation divides by (see :meth:`_apply_count`)."""
        self.record_count = 1
        """The instance count of the newest allocation record."""
        self.held: dict[str, Held] = {}
        """The leases of vanished instances the allocation takes off each model's capacity."""
        self.record_held: dict[str, Held] = {}
        """``held`` of the newest allocation record."""
        self.excess: dict[str, int] = {}
        """``excess`` of the newest allocation record: leases the fleet holds above the shares."""
        self._reported: dict[str, int] = {}
        """Leases per model in the last lease report Redis took."""
        self._reporting: asyncio.Task[None] | None = None
        self.settle_until = 0.0
        """Monotonic time until which membership is unsettled (after Redis lost data, an outage or
        this instance's eviction): the count never falls below :attr:`count_floor` before then."""
        self.count_floor = 0
        self.last_contact = time.monotonic()
        """Monotonic time of the last register or heartbeat Redis answered."""
        self._subscription: AllocationSubscription | None = None
        self.epoch = -1
        self.epoch_applied_at: float | None = None
        """When (Unix time) this instance applied the allocation record of :attr:`epoch`."""
        self.record_time_ms = -1
        self.registered = False
        self.draining = False
        self.redis = RedisHealth()
        self.allocation_changes = 0
        self.grants: GrantKeeper | None = None
        self.manager: JobTypeManager | None = None
        self._futures: dict[str, asyncio.Future[Ticket]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._stopped = False
        self.redis_commands = 0
        self.redis_timing = Histogram(REDIS_BUCKETS)
        """Round trips of the Redis calls that succeeded (``fleet_limiter_redis_call_duration_seconds``)."""
        self.acquires = AcquireStats()
        """Admissions, refusals and waits of :meth:`acquire` (``fleet_limiter_admissions_total``, ...)."""
        self.shadow = ShadowCounts()
        """Shadow mode: admissions that enforcing would have refused (``fleet_limiter_shadow_refusals_total``,
        summed over the fleet in Redis for the operator's status)."""

    # -- life cycle ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Join the fleet (retrying until Redis answers), then keep following it until :meth:`stop`."""
        delay = 0.2
        while not self._stopped:
            try:
                await self._join()
                break
            except StoreUnavailable as exc:
                self._redis_down(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        if self._stopped:
            return
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._subscription_loop(), name="subscription"),
            asyncio.create_task(self._housekeeping_loop(), name="housekeeping"),
        ]

    async def _join(self) -> None:
        spec, generation = await self._policy_for_start()
        self._install_policy(spec, generation)
        reply = await self._call(self.store.register(self.instance_id, self._info()))
        self._clock_from(reply)
        self.last_contact = time.monotonic()
        self.registered = True
        self._apply_record(reply.allocation)
        log.info(
            "instance %s joined %s/%s: %d instance(s), policy generation %d",
            self.instance_id,
            self.store.keys.namespace,
            self.store.keys.name,
            self.instance_count,
            self.generation,
        )

    async def _policy_for_start(self) -> tuple[PolicySpec, int]:
        if self.file_spec is not None:
            return self.file_spec, await self._project_file_policy(self.file_spec)
        waited = 0.0
        while True:
            stored = await self._call(self.store.load_policy())
            if stored is not None:
                return PolicySpec.model_validate(stored[0]), stored[1]
            limit = self.settings.policy_wait_seconds
            if limit and waited >= limit:
                raise NotReady(
                    f"no policy projected for {self.store.keys.namespace}/{self.store.keys.name} "
                    f"after {limit:g} s: apply a RateLimitPolicy, or start with --policy FILE"
                )
            self.redis.error = "waiting for the operator to project the policy"
            await asyncio.sleep(1.0)
            waited += 1.0

    async def _project_file_policy(self, spec: PolicySpec) -> int:
        """Make the file's policy the fleet's: project it unless Redis holds the same spec already."""
        mine = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        stored = await self._call(self.store.load_policy())
        if stored is not None and stored[0] == mine:
            return int(stored[1])
        generation = (stored[1] if stored else 0) + 1
        if stored is not None:
            log.warning(
                "policy file differs from the projected generation %d: projecting %d", stored[1], generation
            )
        await self._call(self.store.project_policy(mine, generation))
        return generation

    def _info(self) -> dict[str, Any]:
        host = self.settings.advertise_host or self.settings.host
        return {"host": host, "port": self.settings.port, "startedAt": time.time()}

    async def stop(self) -> None:
        """Graceful shutdown: stop taking work, leave the fleet at once, let in-flight leases finish
        within the grace period, hand back the rest and the unused budget."""
        if self._stopped:
            return
        self.draining = True
        self._stopped = True
        if self.manager is not None:
            for t in self.manager.waiting():
                self.manager.cancel(t, reason="the instance is shutting down")
        if self.registered:
            with contextlib.suppress(StoreUnavailable):
                await self._send_shadow_counts()
        left = self.registered
        reported = await self._leave(None) if left else None
        self.registered = False
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds
        beat = self.spec.instance.heartbeat_seconds if self.spec is not None else 1.0
        next_report = time.monotonic() + beat
        # Polling is simplest here: leases end through HTTP releases, expiry and handler cancellation.
        while self.manager is not None and self.manager.leases and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if left and time.monotonic() >= next_report:  # the ghost shrinks as the leases end
                next_report = time.monotonic() + beat
                reported = await self._leave(reported)
        if left:
            # What is still held now stays counted (until it times out): its clients may still run it.
            await self._leave(reported)
        if self.manager is not None:
            for t in list(self.manager.leases.values()):
                self.manager.release(t, expired=True)
        if self.grants is not None:
            await self.grants.stop()
        if self._subscription is not None:
            self._subscription.close_soon()  # its read ends within one poll, cancelled or not
        tasks = [*self._tasks, *self._background, *([self._reporting] if self._reporting else [])]
        await cancel_all(tasks)

    async def _leave(self, reported: LeaseReport | None) -> LeaseReport | None:
        """Deregister (again) with what the clients still hold, when that changed since ``reported``;
        returns what Redis now holds as this instance's ghost."""
        report = self._lease_report()
        if reported is not None and report.models == reported.models:
            return reported
        try:
            await self._call(self.store.deregister(self.instance_id, report))
        except StoreUnavailable:
            return reported
        return report

    def _lease_report(self) -> LeaseReport:
        """What this instance's clients hold, for Redis: per model, the leases, what they reserved
        and their latest deadline (grant + leaseTimeoutSeconds, in Redis time)."""
        if self.manager is None or self.spec is None:
            return LeaseReport(self.incarnation, {}, 0)
        # Two heartbeats more: a lease granted in place of a released one before the next report
        # has a later deadline than the ones reported.
        timeout = self.spec.instance.lease_timeout_seconds + 2 * self.spec.instance.heartbeat_seconds
        return lease_report(
            self.incarnation,
            (
                (t.model, t.estimate.get("tokens", 0), t.estimate.get("requests", 0), t.granted_at + timeout)
                for t in self.manager.leases.values()
                if t.model is not None and t.granted_at is not None
            ),
        )

    # -- policy and allocation -------------------------------------------------------------------------

    def _memory_budget_kb(self, spec: PolicySpec) -> int | None:
        if self.settings.memory_budget_kb is not None:
            return self.settings.memory_budget_kb
        if spec.instance.memory_budget_mb is not None:
            return spec.instance.memory_budget_mb * 1024
        if any(j.estimate.memory_kb > 0 for j in spec.job_types):
            return default_budget_kb()
        return None

    def _allocation(self) -> Allocation:
        assert self.spec is not None
        return compute_allocation(
            self.spec, max(1, self.instance_count), self._memory_budget_kb(self.spec), self.held, self.excess
        )

    def _install_policy(self, spec: PolicySpec, generation: int) -> None:
        first = self.spec is None
        self.spec, self.generation = spec, generation
        self.store.instance_timeout_seconds = spec.instance.instance_timeout_seconds
        self.store.fence_ms = round(self._settle_seconds() * 1000)
        if first or self.grants is None or self.manager is None:
            self.grants = GrantKeeper(spec, self.store, self.clock, self._call)
            self.manager = JobTypeManager(
                spec,
                self._allocation(),
                self.clock,
                self.grants.ledger,
                self._on_ticket,
                budget_grace_seconds=DRAW_GRACE,
            )
            self.grants.manager = self.manager
            self.manager.fleet_windows = self.grants.refused_window
        else:
            self.grants.update_policy(spec)
            self.manager.set_policy(spec, self._allocation())
            self._after_dispatch()

    def _apply_record(self, record: AllocationRecord) -> None:
        """Follow an allocation record; stale ones (older than the last applied) are ignored.

        Records are ordered by Redis time, then epoch: a heartbeat reply and a published record can
        arrive in either order, and epochs restart when Redis loses its data, Redis time does not.
        """
        if (record.changed_at_ms, record.epoch) <= (self.record_time_ms, self.epoch):
            return
        began_again = bool(
            self.store.records_since and record.since and record.since != self.store.records_since
        )
        if record.epoch < self.epoch or began_again:
            # A newer record of a chain that began again (or with an older epoch): Redis lost its
            # data (a restart without persistence, a flush). Put back what this instance holds of
            # the current windows, so the fleet's counters again include every grant already
            # taken; the budget fence keeps every draw off them meanwhile (docs/fleet.md).
            log.warning("Redis lost its data (epoch %d after %d): reconciling", record.epoch, self.epoch)
            self._unsettled("Redis lost its data")
            if self.grants is not None:
                self._spawn(self.grants.recharge())
        self.record_time_ms, self.epoch = record.changed_at_ms, record.epoch
        if record.since:
            self.store.records_since = record.since
        # Every instance follows the newest generation in Redis, file-started ones too: the file is
        # only where a policy comes from, so a fleet never runs two generations for long.
        if record.generation > self.generation:
            self._spawn(self._reload_policy())
        self.record_count = max(1, record.instance_count)
        self.record_held = record.held
        self._apply_count(record.reason, record.excess)
        self.epoch_applied_at = time.time()

    def _settle_seconds(self) -> float:
        """How long membership takes to settle: every live instance has heartbeated (and so
        registered again) within one instance timeout, plus two heartbeats of slack."""
        assert self.spec is not None
        return self.spec.instance.instance_timeout_seconds + 2 * self.spec.instance.heartbeat_seconds

    def _unsettled(self, why: str) -> None:
        """Membership may be incomplete (instances registering again one by one after Redis lost
        its data, an outage, or this instance's own eviction): until it settles, never divide by
        fewer instances than before, so no instance's share grows on a partial count."""
        if self.spec is None:
            return
        now = time.monotonic()
        if now >= self.settle_until:
            self.count_floor = self.instance_count
            log.warning("membership unsettled (%s): holding the count at >= %d", why, self.count_floor)
        self.settle_until = now + self._settle_seconds()

    def _apply_count(self, reason: str = "settled", excess: dict[str, int] | None = None) -> None:
        """Divide by the newest record's count, or by the floor while membership is unsettled, what
        the vanished instances' clients do not hold (the record's ``held``), keeping free what the
        fleet holds above the shares (the record's ``excess``; unchanged when None). One new
        allocation for all three, so no grant ever sees a new count with an old excess."""
        count = self.record_count
        if time.monotonic() < self.settle_until:
            count = max(count, self.count_floor)
        held = self.record_held
        excess = self.excess if excess is None else excess
        if (count, held, excess) == (self.instance_count, self.held, self.excess) or self.manager is None:
            return
        if count != self.instance_count:
            log.info("allocation: %d -> %d instances (%s)", self.instance_count, count, reason)
        if held != self.held:
            log.info(
                "allocation: leases held by vanished instances %s (%s)",
                {m: h.leases for m, h in held.items()} or "none",
                reason,
            )
        if excess != self.excess:
            log.info("allocation: leases above the shares %s (%s)", excess or "none", reason)
        self.instance_count, self.held, self.excess = count, held, excess
        if self.grants is not None:
            self.grants.instance_count = count
        self.allocation_changes += 1
        self.manager.set_allocation(self._allocation())
        self._after_dispatch()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, holding a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reload_policy(self) -> None:
        try:
            stored = await self._call(self.store.load_policy())
        except StoreUnavailable as exc:
            self._redis_down(exc)
            return
        if stored is None or stored[1] <= self.generation:
            return
        try:
            spec = PolicySpec.model_validate(stored[0])
        except ValueError as exc:  # the operator validates first; never apply what does not parse
            log.error(
                "projected policy generation %d is invalid, keeping %d: %s", stored[1], self.generation, exc
            )
            return
        log.info("policy generation %d -> %d applied live", self.generation, stored[1])
        self._install_policy(spec, stored[1])

    # -- Redis plumbing ---------------------------------------------------------------------------------

    async def _call(self, coro: Any) -> Any:
        start = time.perf_counter()
        self.redis_commands += 1
        try:
            result = await coro
        except StoreUnavailable as exc:
            self._redis_down(exc)
            raise
        self.redis.last_latency_seconds = elapsed = time.perf_counter() - start
        self.redis_timing.observe(elapsed)
        if not self.redis.connected:
            self.redis.connected, self.redis.error, self.redis.since = True, None, time.time()
        return result

    def _redis_down(self, exc: Exception) -> None:
        if self.redis.connected or self.redis.error is None:
            log.warning("Redis unavailable: %s", exc)
            self.redis.since = time.time()
        self.redis.connected = False
        self.redis.error = str(exc)
        self.redis.errors += 1

    def _clock_from(self, reply: MembershipReply) -> None:
        # Redis's clock decides windows: follow it (the round trip error is well under a window).
        self.clock.offset = reply.redis_time_ms / 1000 - time.time()

    async def _heartbeat_loop(self) -> None:
        assert self.spec is not None
        while not self._stopped:
            interval = self.spec.instance.heartbeat_seconds
            started = time.monotonic()
            try:
                await self._beat()
                if self.grants is not None:
                    await self.grants.give_back(keep_recent=True)
                    await self.grants.charge_pending()
                await self._send_shadow_counts()
            except StoreUnavailable:
                self._unsettled("Redis unavailable")
            except Exception:  # a bug must not stop the heartbeat: log it and keep beating
                log.exception("heartbeat failed")
            self._apply_count()  # releases the floor once membership has settled
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _send_shadow_counts(self) -> None:
        """Add this instance's new shadow counts to the fleet's totals in Redis (kept on failure)."""
        counts = self.shadow.take_unsent()
        if not counts:
            return
        try:
            await self._call(self.store.add_shadow_counts(counts))
        except StoreUnavailable:
            self.shadow.put_back(counts)
            raise

    async def _beat(self) -> None:
        """One heartbeat: tell Redis this instance lives and what its clients hold, and follow the
        allocation it answers with."""
        report = self._lease_report()
        reply = await self._call(self.store.heartbeat(self.instance_id, report))
        self._reported = {m: h.leases for m, h in report.models.items()}
        self._clock_from(reply)
        self.last_contact = time.monotonic()
        if reply.changed:
            log.warning("instance %s had been evicted; registered again", self.instance_id)
            self._unsettled("this instance had been evicted or Redis had lost it")
        if reply.allocation.generation == 0:
            await self._reproject()
        self._apply_record(reply.allocation)

    def _rising(self) -> bool:
        """Whether the clients hold more leases on some model than the last report says."""
        if self.manager is None:
            return False
        held: dict[str, int] = {}
        for (_, model), n in self.manager.in_flight.items():
            held[model] = held.get(model, 0) + n
        return any(n > self._reported.get(m, 0) for m, n in held.items())

    async def _report_rise(self) -> None:
        """Report at once, not at the next heartbeat, when the leases held rise above the last
        report: were the instance to vanish now, its ghost would be short of them. Under steady load
        a freed slot is refilled and nothing rises, so this costs a call only when the load grows
        (at most one at a time)."""
        try:
            while self.registered and not self._stopped and self._rising():
                await self._beat()
        except StoreUnavailable:
            pass
        except Exception:
            log.exception("lease report failed")

    async def _reproject(self) -> None:
        """Redis lost its data (restart without persistence): put back the policy this instance runs."""
        assert self.spec is not None
        mine = self.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        if await self._call(self.store.project_policy(mine, max(1, self.generation))):
            log.warning("Redis had lost the policy: projected generation %d again", self.generation)

    async def _subscription_loop(self) -> None:
        while not self._stopped:
            try:
                async with self.store.subscribe() as sub:
                    self._subscription = sub
                    # What was published between this instance's registration and the subscription
                    # (a burst of joins) was missed: the stored record is the newest of it.
                    stored = await self.store.allocation()
                    if stored is not None:
                        self._apply_record(stored)
                    async for item in sub:
                        if isinstance(item, Pull):
                            if self.grants is not None and self.registered:
                                self._spawn(self.grants.give_back_model(item.model))
                        else:
                            self._apply_record(item)
            except StoreUnavailable as exc:
                self._redis_down(exc)
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("allocation subscription failed; subscribing again")
                await asyncio.sleep(0.5)

    async def _housekeeping_loop(self) -> None:
        while not self._stopped:
            await asyncio.sleep(0.1)
            if self.manager is not None:
                self.manager.expire()

    # -- leases -------------------------------------------------------------------------------------------

    def _after_dispatch(self) -> None:
        if self.grants is not None and not self._stopped:
            self.grants.after_dispatch()

    def _on_ticket(self, ticket: Ticket) -> None:
        fut = self._futures.get(ticket.id)
        if fut is not None and not fut.done():
            fut.set_result(ticket)
        if ticket.state == "granted" and ticket.reservation is not None and self.grants is not None:
            self.grants.note_reserved(ticket.reservation)
        idle = self._reporting is None or self._reporting.done()
        if ticket.state == "granted" and self.registered and self.redis.connected and idle and self._rising():
            self._reporting = asyncio.get_running_loop().create_task(self._report_rise())

    def _ready_manager(self) -> JobTypeManager:
        if self.draining:
            raise _not_ready("the instance is shutting down; retry on another instance")
        if self.manager is None or not self.registered:
            reason = self.redis.error or "joining the fleet"
            raise _not_ready(f"the instance has not joined the fleet yet: {reason}")
        if (lost := self._out_of_contact()) is not None:
            raise _not_ready(lost)
        return self.manager

    def _out_of_contact(self) -> str | None:
        """Why this instance may no longer be a member, or None.

        Silent for longer than the instance timeout (frozen, partitioned from Redis, or Redis down
        that long), it may have been evicted and its share given to the others: it admits nothing
        new until a heartbeat has shown it is a member again (leases it already gave keep running).
        """
        if self.spec is None:
            return None
        silent = time.monotonic() - self.last_contact
        timeout = self.spec.instance.instance_timeout_seconds
        if silent <= timeout:
            return None
        return (
            f"no contact with the fleet for {silent:.1f} s (instanceTimeoutSeconds {timeout:g}): the "
            "fleet may have given this instance's share to the others; admitting again once it has "
            "re-joined"
        )

    async def acquire(
        self,
        job_type: str | None = None,
        models: list[str] | None = None,
        estimate: Mapping[str, int] | None = None,
        wait_seconds: float | None = None,
        *,
        shadow_reason: str | None = None,
    ) -> Ticket:
        """Wait for a lease (a slot and its reservation). Raises an :class:`AdmissionError`.

        Every answer is counted in :attr:`acquires` (admissions, refusals by reason, waits).
        ``shadow_reason``: the caller (the proxy, in shadow mode) would already have refused the
        request for this reason; the lease is counted under it in :attr:`shadow`."""
        try:
            manager = self._ready_manager()
        except NotReady:
            self.acquires.refused(self._known_job_type(job_type), "not_ready")
            raise
        assert self.spec is not None
        name = job_type or self.spec.default_job_type_name
        try:
            ticket = manager.submit(name, models, estimate, wait_seconds)
        except QueueFull as exc:
            self.acquires.refused(name, exc.reason)
            raise
        except AdmissionError as exc:
            self.acquires.refused(self._known_job_type(name), exc.reason)
            raise
        self._after_dispatch()
        if ticket.state == "granted":
            return self._admitted(ticket, shadow_reason)
        fut: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        self._futures[ticket.id] = fut
        try:
            timeout = max(0.0, ticket.deadline - self.clock.now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.CancelledError:
            # The caller went away: leave the queue, or give back a slot granted in the meantime.
            if _granted(ticket):
                self._release_now(ticket, None)
            manager.cancel(ticket)
            raise
        finally:
            self._futures.pop(ticket.id, None)
        if _granted(ticket) or (not self.draining and manager.admit_anyway(ticket)):
            return self._admitted(ticket, shadow_reason)
        if self.draining:
            refusal = _not_ready("the instance is shutting down; retry on another instance").refusal
        else:
            refusal = manager.refusal(ticket)
        assert refusal is not None
        self.acquires.refused(ticket.job_type, refusal.reason, self.clock.now() - ticket.enqueued_at)
        manager.cancel(ticket, reason="all models rejected: no slot freed within the wait")
        raise NoCapacity(
            f"all models rejected: no slot for job type '{ticket.job_type}' on "
            f"{', '.join(ticket.models)} within {ticket.deadline - ticket.enqueued_at:g} s: "
            + refusal.message(),
            refusal=refusal,
        )

    def _admitted(self, ticket: Ticket, shadow_reason: str | None) -> Ticket:
        self.acquires.admitted(ticket)
        if reason := shadow_reason or ticket.would_refuse:
            self.shadow.count(ticket.model or "", ticket.job_type, reason)
        return ticket

    def _known_job_type(self, name: str | None) -> str:
        """``name`` (or the default job type) when the policy knows it, else "" (a metrics label:
        names from requests must not create series)."""
        if self.spec is None:
            return ""
        name = name or self.spec.default_job_type_name
        return name if any(j.name == name for j in self.spec.job_types) else ""

    def _release_now(self, ticket: Ticket, actual: Mapping[str, int] | None) -> dict[str, Any]:
        assert self.manager is not None and self.grants is not None
        settlement = None
        if ticket.reservation is not None and ticket.reservation.windows:
            settlement = self.grants.settle(ticket.reservation, actual or {})
        self.manager.release(ticket)
        self._after_dispatch()
        return {
            "leaseId": ticket.id,
            "released": True,
            "model": ticket.model,
            "jobType": ticket.job_type,
            "refunded": settlement.refunded if settlement else {},
            "charged": settlement.charged if settlement else {},
        }

    async def release(self, lease_id: str, actual: Mapping[str, int] | None = None) -> dict[str, Any]:
        """End a lease with its actual usage (refund or charge the difference)."""
        if self.manager is None:
            raise UnknownLease(f"leaseId: unknown lease '{lease_id}'")
        ticket = self.manager.leases.get(lease_id)
        if ticket is None:
            raise UnknownLease(f"leaseId: unknown lease '{lease_id}' (never granted, released, or expired)")
        if actual and self.spec is not None and ticket.model is not None:
            with contextlib.suppress(KeyError):  # a model removed by a policy update: nothing to bound
                if problems := usage_problems(self.spec.model(ticket.model), actual):
                    raise AdmissionError("; ".join(problems))  # 400; the lease stays held
        result = self._release_now(ticket, actual)
        if self.grants is not None and self.grants.charges_pending and self.redis.connected:
            await self.grants.charge_pending()
        return result

    # -- reporting -----------------------------------------------------------------------------------------

    def debug_allocation(self) -> dict[str, Any]:
        """``GET /api/debug/allocation``."""
        if self.manager is None or self.spec is None:
            return {
                "instanceId": self.instance_id,
                "allocation": None,
                "slotsByJobTypeAndModel": {},
                "jobTypes": {},
            }
        alloc = self.manager.allocation
        doc = alloc.to_json()
        return {
            "instanceId": self.instance_id,
            **doc,
            "jobTypes": self.manager.snapshot(),
            "generation": self.generation,
            "epoch": self.epoch,
            "epochAppliedAt": None if self.epoch_applied_at is None else round(self.epoch_applied_at, 4),
            "memoryBudgetKB": alloc.memory_budget_kb,
            "budgets": self.grants.ledger.snapshot(self.clock.now()) if self.grants else {},
            "mode": self.spec.mode,
            "modes": {m.name: self.spec.mode_of(m.name) for m in self.spec.models},
            "wouldRefuse": self.shadow.by_model(),
        }

    def ready(self) -> tuple[bool, str]:
        """Whether the instance should get traffic, and why not."""
        if self.draining:
            return False, "shutting down"
        if not self.registered:
            return False, self.redis.error or "joining the fleet"
        if not self.redis.connected:
            return False, f"Redis unavailable: {self.redis.error}"
        if (lost := self._out_of_contact()) is not None:
            return False, lost
        return True, "ok"

    def health(self) -> dict[str, Any]:
        """Liveness details (the HTTP layer adds the proxy's concurrency section)."""
        return {
            "status": "ok",
            "instanceId": self.instance_id,
            "registered": self.registered,
            "draining": self.draining,
            "instanceCount": self.instance_count,
            "generation": self.generation,
            "redis": {
                "connected": self.redis.connected,
                "error": self.redis.error,
                "errors": self.redis.errors,
                "latencyMs": round(self.redis.last_latency_seconds * 1000, 3),
            },
        }


def _not_ready(why: str) -> NotReady:
    """A 503 of an instance that cannot admit now; retry in a second (or on another instance)."""
    refusal = Refusal(RefusalReason.NOT_READY, Limit("instance"), retry_after=1.0, detail=why)
    return NotReady(why, refusal=refusal)


def _granted(ticket: Ticket) -> bool:
    """Whether a ticket holds a lease (its state changes behind an await)."""
    return ticket.state == "granted"


async def cancel_all(tasks: list[asyncio.Task[Any]], *, rounds: int = 20, every: float = 0.25) -> None:
    """Cancel ``tasks`` and wait until they end, cancelling again the ones still running every
    ``every`` seconds: a cancellation that lands as a read's own timeout expires can be swallowed
    (Python 3.11's ``asyncio.timeout`` turns it into a TimeoutError, and redis-py's read then
    returns None, seen at 100 instances in one process), and a task that ignored it must not keep
    a shutdown waiting for ever. After ``rounds`` tries the rest is left running, logged."""
    pending = {t for t in tasks if not t.done()}
    for t in pending:
        t.cancel()
    for _ in range(rounds):
        if not pending:
            break
        _, pending = await asyncio.wait(pending, timeout=every)
        for t in pending:
            t.cancel()
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            log.debug("task %s ended with %r", t.get_name(), t.exception())
    if pending:
        log.error("tasks still running after shutdown: %s", ", ".join(t.get_name() for t in pending))
