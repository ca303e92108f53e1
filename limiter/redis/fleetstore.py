"""The Redis adapter of one policy: membership, policy projection, allocation updates, window budgets.

:class:`RedisStore` is the only module that talks to Redis. Every operation that reads and writes
is one Lua script (``limiter/redis/lua/*.lua``) so it is atomic and uses Redis's clock; every key comes
from :class:`limiter.redis.keys.PolicyKeys` and shares the policy's hash tag, so the scripts run on Redis
Cluster too. Values going in and out are built and parsed by the pure modules
:mod:`limiter.core.membership` and :mod:`limiter.core.windows`.

Errors and retries follow :mod:`limiter.redis.plumbing`: when Redis cannot be reached every method
raises :class:`~limiter.redis.plumbing.StoreUnavailable`, and callers retry on their own schedule
(the heartbeat loop does, every interval). Every call may be sent once more after a connection
error except ``give_back``: running it twice would hand the same budget out twice. A repeated draw
or charge can only take too much (budget idle until the window ends), never admit too much.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript

from limiter.core.membership import AllocationRecord, LeaseReport, MembershipReply, encode_info, project
from limiter.core.policy import WINDOW_LIMITS
from limiter.core.windows import (
    DEFAULT_WINDOW_SECONDS,
    BudgetAsk,
    BudgetGrant,
    WindowUsage,
    check_dimension,
    check_unique,
    draw_argv,
    parse_draw,
)
from limiter.redis.keys import PolicyKeys
from limiter.redis.plumbing import (
    UNAVAILABLE,
    StoreUnavailable,
    call,
    connect,
    register_scripts,
    run_script,
    server_of,
)

T = TypeVar("T")
#: The most messages one read of the subscription takes from what Redis already sent (a bound, so a
#: flood of pulls cannot keep one read going).
COALESCE_MAX = 10_000

#: Script name -> (file, the library files prepended to it).
_COMMON, _ALLOCATION = ("_common",), ("_common", "_allocation")
SCRIPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "register": ("register", _ALLOCATION),
    "heartbeat": ("heartbeat", _ALLOCATION),
    "deregister": ("deregister", _ALLOCATION),
    "project_policy": ("project_policy", _ALLOCATION),
    "draw": ("draw", _COMMON),
    "give_back": ("give_back", _COMMON),
    "charge": ("charge", _COMMON),
    "usage": ("usage", _COMMON),
}

#: What makes a subscription drop its connection and subscribe again.
_RESUBSCRIBE: tuple[type[BaseException], ...] = (*UNAVAILABLE, StoreUnavailable, TimeoutError)


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """A live instance as Redis knows it."""

    instance_id: str
    last_heartbeat_ms: int
    """Redis time of its last register or heartbeat, ms since the epoch."""
    info: dict[str, Any]
    """The JSON object it registered with."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    """Everything one instance (or the operator) does in Redis for one policy ``namespace/name``.

    Create it with :meth:`from_url` (the store owns and closes its client) or around an existing
    ``redis.asyncio.Redis`` (the caller closes it; turn its retries off, ``retry=Retry(NoBackoff(),
    0)``, or a lost reply to ``give_back`` may be replayed). Scripts are registered here, at client
    start.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        namespace: str,
        name: str,
        *,
        instance_timeout_seconds: float = 5.0,
        window_seconds: Mapping[str, int] | None = None,
        owns_client: bool = False,
    ) -> None:
        """``instance_timeout_seconds``: evict instances silent this long (the policy's
        ``instance.instanceTimeoutSeconds``; assign :attr:`instance_timeout_seconds` when a new
        policy generation changes it). ``window_seconds``: window length per window limit (default
        60 s for the minute limits, 86400 s for the day limits; tests use shorter windows)."""
        self.keys = PolicyKeys(namespace, name)
        self.instance_timeout_seconds = instance_timeout_seconds
        self.records_since = 0
        """``since`` of the last allocation record the instance applied (0: none yet): a draw that
        finds another one in Redis (Redis lost its data) sets the budget fence (:meth:`draw`)."""
        self.fence_ms = 0
        """How long the budget fence stands once set: the time membership takes to settle
        (``instanceTimeoutSeconds + 2 x heartbeatSeconds``, assigned with the policy)."""
        self.window_seconds: dict[str, int] = {**DEFAULT_WINDOW_SECONDS, **(window_seconds or {})}
        for limit, seconds in self.window_seconds.items():
            check_dimension(limit)
            if seconds < 1:
                raise ValueError(f"window_seconds[{limit}]: {seconds} is not valid: at least 1 second")
        self._client = client
        self._owns_client = owns_client
        self._scripts: dict[str, AsyncScript] = register_scripts(client, SCRIPTS)
        self._infos: dict[str, str] = {}
        self.server = server_of(client)
        """Where Redis is (host:port or socket path, never credentials), for messages."""

    @classmethod
    def from_url(cls, url: str, namespace: str, name: str, **kwargs: Any) -> RedisStore:
        """A store with its own client for ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        Timeouts and retries as :func:`limiter.redis.plumbing.connect` sets them; keyword arguments go
        to the constructor.
        """
        client = connect(url, f"fleet-limiter:{namespace}/{name}")
        return cls(client, namespace, name, owns_client=True, **kwargs)

    @property
    def client(self) -> aioredis.Redis:
        """The underlying redis.asyncio client."""
        return self._client

    async def close(self) -> None:
        """Close the client if this store created it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def unavailable(self, operation: str, exc: BaseException) -> StoreUnavailable:
        """The exception to raise for ``exc`` during ``operation``."""
        return StoreUnavailable(f"Redis at {self.server} is unavailable ({operation}): {exc}")

    async def _call(self, operation: str, fn: Callable[[], Awaitable[T]], *, retry: bool = True) -> T:
        """Run ``fn`` with the shared outage and retry policy (:func:`limiter.redis.plumbing.call`)."""
        return await call(self.server, operation, fn, retry=retry)

    async def _run(
        self, script: str, keys: Sequence[str], args: Sequence[str | int], *, retry: bool = True
    ) -> Any:
        return await run_script(self.server, self._scripts[script], script, keys, args, retry=retry)

    # -- health ------------------------------------------------------------------------------------

    async def ping(self) -> float:
        """Round trip to Redis in seconds; raises :class:`StoreUnavailable` when it does not answer."""
        start = time.perf_counter()
        await self._call("ping", self._client.ping)
        return time.perf_counter() - start

    # -- membership --------------------------------------------------------------------------------

    def _timeout_ms(self) -> int:
        return max(1, round(self.instance_timeout_seconds * 1000))

    async def _membership(self, script: str, instance_id: str, *extra: str) -> MembershipReply:
        if not instance_id:
            raise ValueError("instance_id: must not be empty")
        reply = await self._run(
            script, self.keys.membership_keys, [self.keys.channel, self._timeout_ms(), instance_id, *extra]
        )
        return MembershipReply(
            allocation=AllocationRecord.from_json(reply[0]),
            redis_time_ms=int(reply[1]),
            changed=bool(reply[2]),
        )

    async def register(self, instance_id: str, info: dict[str, Any]) -> MembershipReply:
        """Join the fleet (or refresh the registration): evicts silent instances, and when membership
        changed recomputes the allocation and publishes it once. ``info`` (any JSON object, e.g. host
        and port) is kept for :meth:`instances` and re-sent if a heartbeat has to re-register."""
        encoded = encode_info(info)
        self._infos[instance_id] = encoded
        return await self._membership("register", instance_id, encoded)

    async def heartbeat(self, instance_id: str, leases: LeaseReport | None = None) -> MembershipReply:
        """Record that the instance is alive and what its clients hold (``leases``: kept as its
        ghost if it vanishes), and read the allocation back (so a lost pub/sub message costs at most
        one interval). An instance evicted meanwhile (a long pause) is registered again with its
        last info, its ghost of the same incarnation is dropped, and ``changed`` is true."""
        incarnation, report = (leases.incarnation, leases.encode()) if leases else ("", "")
        info = self._infos.get(instance_id, "{}")
        return await self._membership("heartbeat", instance_id, info, incarnation, report)

    async def deregister(self, instance_id: str, leases: LeaseReport | None = None) -> MembershipReply:
        """Leave the fleet (graceful shutdown); the others get the new allocation at once, less
        what ``leases`` says the instance's clients still hold (its ghost, replaced on every call:
        call again as they end, and with an empty report once the last one has)."""
        self._infos.pop(instance_id, None)
        incarnation, report = (leases.incarnation, leases.encode()) if leases else ("", "")
        return await self._membership("deregister", instance_id, incarnation, report)

    async def allocation(self) -> AllocationRecord | None:
        """The stored allocation record, or None before any instance registered."""
        raw = await self._call("allocation", lambda: self._client.get(self.keys.allocation))
        return AllocationRecord.from_json(raw) if raw is not None else None

    async def instances(self) -> list[InstanceRecord]:
        """The registered instances, most recent heartbeat first (may include silent ones not yet
        evicted: eviction happens in the scripts)."""

        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zrange(self.keys.instances, 0, -1, desc=True, withscores=True)
                pipe.hgetall(self.keys.instance_info)
                return await pipe.execute()

        members, infos = await self._call("instances", read)
        infos = {_text(k): _text(v) for k, v in infos.items()}
        return [
            InstanceRecord(_text(member), int(score), json.loads(infos.get(_text(member), "{}")))
            for member, score in members
        ]

    # -- policy ------------------------------------------------------------------------------------

    async def project_policy(self, spec_json: dict[str, Any], generation: int) -> bool:
        """Store generation ``generation`` of the policy (validated first) with its pool parameters,
        recompute the allocation with the next epoch and publish it once, atomically. Returns False
        (and changes nothing) when the stored generation is the same or newer."""
        if generation < 1:
            raise ValueError(f"generation: {generation} is not valid: generations start at 1")
        projection = project(spec_json)
        reply = await self._run(
            "project_policy",
            self.keys.membership_keys,
            [
                self.keys.channel,
                projection.instance_timeout_ms,
                generation,
                projection.spec_json,
                projection.pool_params_json,
            ],
        )
        return bool(reply[0])

    async def load_policy(self) -> tuple[dict[str, Any], int] | None:
        """The projected spec (camelCase JSON) and its generation, or None when none is projected."""
        spec, generation = await self._call(
            "load_policy", lambda: self._client.hmget(self.keys.policy, ["spec", "generation"])
        )
        if spec is None or generation is None:
            return None
        return json.loads(spec), int(generation)

    async def delete_policy(self) -> int:
        """Remove every key of the policy (the operator's finalizer); returns how many existed.

        Budget keys are found through the registry the budget scripts keep, never by scanning. A
        draw racing the deletion can write a key again; the loop catches that. Instances still
        running will register again: stop them first.
        """

        async def delete() -> int:
            deleted = 0
            for _ in range(5):
                budgets = [_text(k) for k in await self._client.smembers(self.keys.budget_registry)]
                deleted += int(await self._client.delete(*self.keys.fixed_keys, *budgets))
                if not await self._client.exists(self.keys.budget_registry):
                    break
            return deleted

        return await self._call("delete_policy", delete)

    # -- shadow mode -------------------------------------------------------------------------------

    async def add_shadow_counts(self, counts: Mapping[str, int]) -> None:
        """Add an instance's new shadow counts (reason -> admissions enforcing would have refused)
        to the fleet's totals, in one transaction. Not sent again after a connection error: the
        caller keeps the counts for its next heartbeat instead (so a reply lost after Redis applied
        them may count them twice; these are counters for people, never limits)."""
        if not counts:
            return

        async def add() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                for reason, n in counts.items():
                    pipe.hincrby(self.keys.shadow, reason, n)
                await pipe.execute()

        await self._call("add_shadow_counts", add, retry=False)

    async def shadow_counts(self) -> dict[str, int]:
        """The fleet's shadow totals: reason -> admissions that enforcing would have refused."""
        raw = await self._call("shadow_counts", lambda: self._client.hgetall(self.keys.shadow))
        return {_text(k): int(v) for k, v in sorted(raw.items())}

    # -- allocation updates ------------------------------------------------------------------------

    def subscribe(self) -> AllocationSubscription:
        """Allocation records (and pulls) as they are published; use ``async with store.subscribe()
        as sub: async for record in sub: ...``. See :class:`AllocationSubscription`."""
        return AllocationSubscription(self)

    async def pull(self, model: str) -> int:
        """Ask every instance to hand back its unspent grants of ``model`` now (instead of at its
        next heartbeat); returns how many subscribers received it."""
        return int(await self._call("pull", lambda: self._client.publish(self.keys.pull_channel, model)))

    # -- window budgets ----------------------------------------------------------------------------

    def _budget_keys(self, model: str, dimensions: Sequence[str]) -> list[str]:
        check_unique(dimensions)
        return [self.keys.budget(model, d) for d in dimensions]

    async def draw(self, model: str, asks: Sequence[BudgetAsk]) -> BudgetGrant:
        """Take budget on ``model`` from the fleet's current windows, all dimensions or none.

        Each dimension grants ``min(want, left)`` if every dimension has at least ``need`` left;
        otherwise nothing is taken and :attr:`BudgetGrant.retry_after_ms` says when the refusing
        windows end.
        """
        keys = self._budget_keys(model, [a.dimension for a in asks])
        if not keys:
            raise ValueError("asks: at least one dimension is needed")
        reply = await self._run(
            "draw",
            [self.keys.budget_registry, *keys, self.keys.allocation, self.keys.budget_fence],
            draw_argv(asks, self.window_seconds, self.records_since, self.fence_ms),
        )
        return parse_draw(asks, reply)

    async def give_back(self, model: str, refunds: Sequence[tuple[str, int, int]]) -> list[int]:
        """Return unused budget ``(dimension, window_id, amount)`` to the window it was drawn in (a
        no-op once that window has ended). Returns the amounts actually given back, in order."""
        keys = self._budget_keys(model, [r[0] for r in refunds])
        if not keys:
            return []
        for dimension, _, amount in refunds:
            if amount < 0:
                raise ValueError(f"{dimension}: amount {amount} is not valid: give back 0 or more")
        reply = await self._run(
            "give_back",
            keys,
            [v for _, window, amount in refunds for v in (window, amount)],
            retry=False,  # twice would hand the same budget out twice
        )
        return [int(v) for v in reply]

    async def charge(self, model: str, charges: Sequence[tuple[str, int]]) -> list[WindowUsage]:
        """Add ``(dimension, amount)`` to the current windows even beyond the limit: the overage of a
        job that used more than it reserved. An overdrawn window refuses draws until it ends."""
        keys = self._budget_keys(model, [c[0] for c in charges])
        if not keys:
            return []
        for dimension, amount in charges:
            if amount < 0:
                raise ValueError(
                    f"{dimension}: amount {amount} is not valid: charge 0 or more (give back instead)"
                )
        args = [v for dimension, amount in charges for v in (self.window_seconds[dimension], amount)]
        reply = await self._run("charge", [self.keys.budget_registry, *keys], args)
        return _usages([c[0] for c in charges], reply)

    async def usage(self, model: str, dimensions: Sequence[str] = tuple(WINDOW_LIMITS)) -> list[WindowUsage]:
        """The current window and what is used in it, per dimension (for debug and metrics)."""
        keys = self._budget_keys(model, dimensions)
        reply = await self._run("usage", keys, [self.window_seconds[d] for d in dimensions])
        return _usages(list(dimensions), reply)


def _usages(dimensions: list[str], reply: Sequence[int]) -> list[WindowUsage]:
    """Parse ``{time, then window id, used, ms left per key}`` replies (charge and usage)."""
    return [
        WindowUsage(d, int(reply[1 + 3 * i]), int(reply[2 + 3 * i]), int(reply[3 + 3 * i]))
        for i, d in enumerate(dimensions)
    ]


@dataclass(frozen=True, slots=True)
class Pull:
    """Another instance's window grant on ``model`` is spent: hand back what this one does not use."""

    model: str


class AllocationSubscription:
    """Allocation records published on the policy's channel, robust to reconnects; and the
    :class:`Pull` requests of its pull channel.

    ``async with`` waits until the subscription is confirmed by Redis, so nothing published after
    it is missed. When the connection drops, it reconnects with backoff and then yields the stored
    record, since messages published meanwhile are lost. Records may repeat or arrive after a
    newer one was read from a heartbeat: compare :attr:`AllocationRecord.epoch` (epochs restart
    when Redis loses its data, with ``reason`` ``resync`` or a join). A client with redis-py's own
    retries on (not :meth:`RedisStore.from_url`'s) may resubscribe silently and skip that read; the
    heartbeat's read-back still bounds the delay to one interval.
    """

    def __init__(
        self, store: RedisStore, *, poll_seconds: float = 1.0, max_backoff_seconds: float = 2.0
    ) -> None:
        self._store = store
        self._pubsub: PubSub | None = None
        self._poll = poll_seconds
        self._max_backoff = max_backoff_seconds
        self._closed = False
        self.reconnects = 0
        """How many times the subscription was re-established (for metrics)."""
        self.coalesced = 0
        """Allocation records skipped because a newer one had already arrived behind them."""
        self._pulls: deque[Pull] = deque()

    async def _connect(self) -> None:
        pubsub = self._store.client.pubsub()
        try:
            await pubsub.subscribe(self._store.keys.channel, self._store.keys.pull_channel)
            confirmed = 0
            async with asyncio.timeout(5):
                while confirmed < 2:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg["type"] == "subscribe":
                        confirmed += 1
        except BaseException:
            await _close(pubsub)
            raise
        self._pubsub = pubsub

    async def _drop(self) -> None:
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            with contextlib.suppress(*UNAVAILABLE):
                await _close(pubsub)

    async def __aenter__(self) -> Self:
        try:
            await self._connect()
        except UNAVAILABLE as exc:
            raise self._store.unavailable("subscribe", exc) from exc
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def close_soon(self) -> None:
        """Make iteration stop at its next poll (within ``poll_seconds``), without touching the
        connection a read may be using; :meth:`aclose` then releases it."""
        self._closed = True

    async def aclose(self) -> None:
        """Unsubscribe and release the connection; iteration then stops."""
        self._closed = True
        await self._drop()

    async def _coalesce(self, msg: dict[str, Any]) -> bytes | str | None:
        """The newest allocation record among ``msg`` and the messages already received behind it
        (None: only pulls), the pulls queued in order. A burst of membership changes (a cold start
        of the fleet) publishes a record per change and every instance receives them all: only the
        newest matters, since the channel delivers in publish order, so the others are never
        decoded nor applied (:attr:`coalesced` counts them)."""
        newest: bytes | str | None = None
        assert self._pubsub is not None
        for _ in range(COALESCE_MAX):
            if msg["type"] == "message":
                if _text(msg["channel"]) == self._store.keys.pull_channel:
                    self._pulls.append(Pull(_text(msg["data"])))
                else:
                    if newest is not None:
                        self.coalesced += 1
                    newest = msg["data"]
            following = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
            if following is None:
                break
            msg = following
        return newest

    def __aiter__(self) -> AllocationSubscription:
        return self

    async def __anext__(self) -> AllocationRecord | Pull:
        backoff = 0.05
        while not self._closed:
            try:
                if self._pubsub is None:
                    await self._connect()
                    self.reconnects += 1
                    record = await self._store.allocation()
                    if record is not None:
                        return record
                    continue
                if self._pulls:
                    return self._pulls.popleft()
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=self._poll)
                if msg is not None and msg["type"] == "message":
                    newest = await self._coalesce(msg)
                    if newest is not None:
                        return AllocationRecord.from_json(newest)
                    if self._pulls:
                        return self._pulls.popleft()
            except _RESUBSCRIBE:
                await self._drop()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
        raise StopAsyncIteration


async def _close(pubsub: Any) -> None:
    """``PubSub.aclose()``: typed as ``Any`` since redis-py annotates it only from 8.2 on, so the
    same code passes ``mypy --strict`` with either."""
    await pubsub.aclose()
