"""Credit budgets per API key in Redis: exact across any number of instances.

:class:`CreditStore` runs one Lua script per operation (``limiter/redis/lua/credits_*.lua``), so every
check-and-charge is atomic in Redis and no interleaving of instances can overspend a key. Time is
Redis's (TIME), for refills and reservation deadlines alike. Keys come from
:meth:`limiter.redis.keys.PolicyKeys.credits` and carry the policy's hash tag; the API key appears in
them only as its SHA-256.

The Python API the LLM proxy uses (see docs/credits.md)::

    credits = CreditStore.for_store(instance.store)      # one per instance, on its Redis client
    held = await credits.reserve(api_key, estimate, request_id=rid)
    if not held.allowed: ...answer 429, forward nothing...
    try: ...forward, read usage...
    finally: await credits.settle(api_key, held.reservation_id, actual_tokens)

Concurrency: at most ``max_in_flight`` calls of one store are at Redis at once; more wait their
turn in the process. The client is shared with the instance's heartbeat and budget draws, and
redis-py refuses (rather than queues) a call beyond its pool's size (100 connections by default).

Retries follow :mod:`limiter.redis.plumbing`: a call that fails on a connection error is sent
once more on a fresh connection only if running it twice cannot charge twice: reads, put, delete,
settle (its answer is remembered) and consume / reserve *with* a request id. A consume without one
is never repeated: its reply may have been lost after it ran.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from limiter.core.credits import (
    DEFAULT_RESERVATION_TTL_SECONDS,
    MAX_RESERVATION_TTL_SECONDS,
    MAX_SECONDS,
    REQUEST_TTL_SECONDS,
    Consumption,
    KeyState,
    Refill,
    RequestConflict,
    Reservation,
    Settlement,
    UnknownKey,
    UnknownReservation,
    check_amount,
    check_api_key,
    check_request_id,
    reservation_deadline_ms,
)
from limiter.redis.fleetstore import RedisStore
from limiter.redis.keys import CreditKeys, PolicyKeys, credit_key_id
from limiter.redis.plumbing import call, connect, register_scripts, server_of

T = TypeVar("T")

#: The credits scripts: name -> (file, the libraries prepended to it).
SCRIPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    name: (f"credits_{name}", ("_common", "credits_lib"))
    for name in ("put", "get", "delete", "consume", "reserve", "settle")
}


class CreditStore:
    """Credit budgets of the API keys of one policy ``namespace/name``.

    Built around a ``redis.asyncio.Redis`` client (an instance shares its store's: see
    :meth:`for_store`), whose retries must be off as :meth:`limiter.redis.fleetstore.RedisStore.from_url`
    sets them; or with :meth:`from_url`, which owns and closes its client. Scripts are registered
    here, at client start. Every method raises :class:`StoreUnavailable` when Redis cannot be
    reached and a :class:`~limiter.core.credits.CreditError` for a request that cannot be done.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        namespace: str,
        name: str,
        *,
        request_ttl_seconds: int = REQUEST_TTL_SECONDS,
        max_in_flight: int = 64,
        owns_client: bool = False,
    ) -> None:
        """``request_ttl_seconds``: how long answers are remembered for idempotent retries.
        ``max_in_flight``: calls at Redis at once; keep it below the client's pool size."""
        self.keys = PolicyKeys(namespace, name)
        self.request_ttl_ms = (
            check_amount("request_ttl_seconds", request_ttl_seconds, maximum=MAX_SECONDS) * 1000
        )
        self._client = client
        self._owns_client = owns_client
        self._in_flight = asyncio.Semaphore(check_amount("max_in_flight", max_in_flight, maximum=10_000))
        self._scripts: dict[str, AsyncScript] = register_scripts(client, SCRIPTS)
        self.server = server_of(client)
        # Plain counters for the metrics (limiter.web.metrics.CreditsCollector reads them at scrape time).
        self.decisions: Counter[tuple[str, str]] = Counter()
        """(consume | reserve, allowed | refused | replayed) -> answers of this store."""
        self.charged = 0
        """Credits charged by consumes and settlements (replays charge nothing)."""
        self.uncharged = 0
        """Usage settled beyond what the keys had left."""

    def _count(self, operation: str, allowed: bool, replayed: bool) -> None:
        self.decisions[(operation, "replayed" if replayed else "allowed" if allowed else "refused")] += 1

    @classmethod
    def from_url(cls, url: str, namespace: str, name: str, **kwargs: Any) -> CreditStore:
        """A store with its own client for ``url``, configured like RedisStore.from_url's."""
        client = connect(url, f"fleet-limiter-credits:{namespace}/{name}")
        return cls(client, namespace, name, owns_client=True, **kwargs)

    @classmethod
    def for_store(cls, store: RedisStore, **kwargs: Any) -> CreditStore:
        """The credit store of the policy ``store`` serves, on the same client (an instance's: the
        composition root, :func:`limiter.app.build_app`, makes one per instance)."""
        return cls(store.client, store.keys.namespace, store.keys.name, **kwargs)

    @property
    def client(self) -> aioredis.Redis:
        """The underlying redis.asyncio client."""
        return self._client

    async def close(self) -> None:
        """Close the client if this store created it."""
        if self._owns_client:
            await self._client.aclose()

    # -- plumbing ------------------------------------------------------------------------------------

    async def _call(self, operation: str, fn: Callable[[], Awaitable[T]], *, retry: bool) -> T:
        """``fn`` under the in-flight bound, with the shared outage and retry policy."""

        async def bounded() -> T:
            async with self._in_flight:
                return await fn()

        return await call(self.server, f"credits {operation}", bounded, retry=retry)

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[str | int], *, retry: bool) -> Any:
        return await self._call(
            script, lambda: self._scripts[script](keys=list(keys), args=list(args)), retry=retry
        )

    def _keys(self, api_key: str) -> tuple[str, CreditKeys]:
        key_id = credit_key_id(check_api_key(api_key))
        return key_id, self.keys.credits(key_id)

    # -- administration ------------------------------------------------------------------------------

    async def put(
        self,
        api_key: str,
        credits: int,
        refill: Refill | None = None,
        expires_in_seconds: int | None = None,
    ) -> tuple[KeyState, bool]:
        """Create or replace the budget of ``api_key``: ``credits`` now and as the capacity refills
        top up to; optional ``refill``; optional expiry. Returns the state and whether it was created.

        Replacing keeps lifetime totals and open reservations (they keep holding their credits:
        remaining becomes ``max(0, credits - reserved)``) and restarts the refill schedule.
        """
        check_amount("credits", credits, minimum=0)
        if expires_in_seconds is not None:
            check_amount("expiresInSeconds", expires_in_seconds, maximum=MAX_SECONDS)
        key_id, keys = self._keys(api_key)
        reply = await self._run(
            "put",
            [*keys.script_keys, self.keys.credit_registry],
            [
                credits,
                refill.amount if refill else 0,
                refill.every_seconds * 1000 if refill else 0,
                (expires_in_seconds or 0) * 1000,
                key_id,
            ],
            retry=True,
        )
        return KeyState.from_reply(key_id, reply[1:]), bool(reply[0])

    async def get(self, api_key: str) -> KeyState:
        """The budget of ``api_key`` (expired reservations and due refills applied first)."""
        key_id, keys = self._keys(api_key)
        reply = await self._run("get", keys.script_keys, [], retry=True)
        if not reply:
            raise UnknownKey.of(key_id)
        return KeyState.from_reply(key_id, reply)

    async def delete(self, api_key: str) -> bool:
        """Forget the budget of ``api_key`` and its open reservations; False if there was none."""
        key_id, keys = self._keys(api_key)
        reply = await self._run(
            "delete", [*keys.script_keys, self.keys.credit_registry], [key_id], retry=True
        )
        return bool(reply)

    async def delete_all(self) -> int:
        """Remove every credit budget of the policy (for the operator's finalizer, next to
        :meth:`limiter.redis.fleetstore.RedisStore.delete_policy`); returns how many budgets existed.
        Idempotency answers are left to expire."""

        async def delete() -> int:
            deleted = 0
            registry = self.keys.credit_registry
            for _ in range(5):  # a put racing the deletion may register a key again
                ids = [
                    i.decode() if isinstance(i, bytes) else str(i)
                    for i in await self._client.smembers(registry)
                ]
                for key_id in ids:
                    keys = self.keys.credits(key_id)
                    deleted += int(await self._client.delete(keys.budget))
                    await self._client.delete(keys.deadlines, keys.reserved)
                    await self._client.srem(registry, key_id)
                if not await self._client.exists(registry):
                    break
            return deleted

        return await self._call("delete_all", delete, retry=True)

    # -- spending ------------------------------------------------------------------------------------

    async def consume(self, api_key: str, cost: int, request_id: str | None = None) -> Consumption:
        """Spend ``cost`` credits if the key has them, all or nothing.

        With ``request_id``, an allowed consume is remembered for ``request_ttl_seconds``: the same
        id again returns the original answer and charges nothing (with a different cost it raises
        :class:`RequestConflict`). Refusals are not remembered.
        """
        check_amount("cost", cost)
        key_id, keys = self._keys(api_key)
        script_keys = keys.script_keys
        args: list[str | int] = [cost]
        if request_id is not None:
            script_keys.append(keys.request("consume", check_request_id(request_id)))
            args.append(self.request_ttl_ms)
        status, remaining, next_refill, original_cost = await self._run(
            "consume", script_keys, args, retry=request_id is not None
        )
        if status == -1:
            raise UnknownKey.of(key_id)
        if status == 2 and int(original_cost) != cost:
            raise RequestConflict(
                f"requestId: {request_id!r} was already used with cost {int(original_cost)}, not {cost}; "
                "use a new request id for a new request"
            )
        self._count("consume", status in (1, 2), status == 2)
        if status == 1:
            self.charged += cost
        return Consumption(
            allowed=status in (1, 2),
            remaining=int(remaining),
            cost=cost,
            next_refill_ms=int(next_refill) if status == 0 and next_refill >= 0 else None,
            request_id=request_id,
            replayed=status == 2,
        )

    async def reserve(
        self,
        api_key: str,
        amount: int,
        request_id: str | None = None,
        ttl_seconds: int = DEFAULT_RESERVATION_TTL_SECONDS,
    ) -> Reservation:
        """Set aside ``amount`` credits for work whose cost is known only afterwards; refused
        (``allowed`` false, nothing held) if it does not fit. Settle it with :meth:`settle`;
        unsettled, its credits return by themselves ``ttl_seconds`` later (Redis time).

        With ``request_id`` a retry returns the original reservation (with a different amount it
        raises :class:`RequestConflict`).
        """
        check_amount("amount", amount)
        check_amount("ttlSeconds", ttl_seconds, maximum=MAX_RESERVATION_TTL_SECONDS)
        key_id, keys = self._keys(api_key)
        script_keys = keys.script_keys
        args: list[str | int] = [amount, ttl_seconds * 1000, secrets.token_hex(8)]
        if request_id is not None:
            script_keys.append(keys.request("reserve", check_request_id(request_id)))
            args.append(self.request_ttl_ms)
        status, remaining, next_refill, original, rid, deadline = await self._run(
            "reserve", script_keys, args, retry=request_id is not None
        )
        if status == -1:
            raise UnknownKey.of(key_id)
        if status == 2 and int(original) != amount:
            raise RequestConflict(
                f"requestId: {request_id!r} was already used to reserve {int(original)}, not {amount}; "
                "use a new request id for a new request"
            )
        allowed = status in (1, 2)
        self._count("reserve", allowed, status == 2)
        return Reservation(
            allowed=allowed,
            remaining=int(remaining),
            amount=amount,
            reservation_id=(rid.decode() if isinstance(rid, bytes) else str(rid)) if allowed else None,
            deadline_ms=int(deadline) if allowed else None,
            next_refill_ms=int(next_refill) if status == 0 and next_refill >= 0 else None,
            request_id=request_id,
            replayed=status == 2,
        )

    async def settle(self, api_key: str, reservation_id: str, actual: int) -> Settlement:
        """Close a reservation with the ``actual`` cost: refund the rest of the reservation, or
        charge the overage from remaining (never below 0; what cannot be paid is reported as
        ``uncharged``). After the deadline the reservation's credits went back already; a late
        settle then charges ``actual`` from remaining likewise (``late``).

        Settling again returns the first answer and charges nothing; with a different ``actual`` it
        raises :class:`RequestConflict`.
        """
        check_amount("actual", actual, minimum=0)
        key_id, keys = self._keys(api_key)
        deadline = reservation_deadline_ms(reservation_id)
        reply = await self._run(
            "settle",
            [*keys.script_keys, keys.request("settle", reservation_id)],
            [reservation_id, deadline, actual, self.request_ttl_ms],
            retry=True,
        )
        status = int(reply[0])
        if status == -1:
            raise UnknownKey.of(key_id)
        if status == -2:
            raise UnknownReservation(f"reservationId: no open reservation {reservation_id} on this key")
        if status == -3:
            raise UnknownReservation(
                f"reservationId: {reservation_id} expired more than {self.request_ttl_ms // 1000} s ago "
                "and can no longer be settled"
            )
        reserved, first_actual, charged, refunded, uncharged, remaining, late = (int(v) for v in reply[1:8])
        if status == 2 and first_actual != actual:
            raise RequestConflict(
                f"actual: reservation {reservation_id} was already settled with actual {first_actual}, "
                f"not {actual}"
            )
        if status != 2:
            self.charged += charged
            self.uncharged += uncharged
        return Settlement(
            reservation_id=reservation_id,
            reserved=reserved,
            actual=first_actual,
            charged=charged,
            refunded=refunded,
            uncharged=uncharged,
            remaining=remaining,
            late=bool(late),
            replayed=status == 2,
        )

    async def release(self, api_key: str, reservation_id: str) -> Settlement:
        """Give a reservation back whole (the work never ran): settle with actual 0."""
        return await self.settle(api_key, reservation_id, 0)
