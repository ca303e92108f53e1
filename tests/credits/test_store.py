"""The credits scripts through :class:`CreditStore`, against a real redis-server.

Semantics (refill cap, idempotency, reserve/settle, expiry) at the Redis layer, with several
stores on clients of their own standing in for instances. The HTTP layer and real processes are
in test_http.py and test_matrix.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from limiter.core.credits import InvalidInput, Refill, RequestConflict, UnknownKey, UnknownReservation
from limiter.redis.creditstore import CreditStore
from limiter.redis.keys import credit_key_id
from tests.credits.conftest import new_key
from tests.support.redis_server import new_server

pytestmark = pytest.mark.redis


async def test_put_get_replace_and_delete(credit_store: CreditStore) -> None:
    key = new_key()
    state, created = await credit_store.put(key, 100, Refill(10, 60), expires_in_seconds=3600)
    assert created and state.remaining == state.capacity == 100 and state.reserved == 0
    assert state.refill == Refill(10, 60) and 59_000 < (state.next_refill_ms or 0) <= 60_000
    assert state.expires_at_ms is not None and state.expires_at_ms - state.redis_time_ms == 3_600_000
    assert (await credit_store.consume(key, 30)).remaining == 70
    again, created = await credit_store.put(key, 50)
    # Replacing sets the balance and the configuration and keeps the lifetime totals.
    assert not created and again.remaining == 50 and again.refill is None and again.expires_at_ms is None
    assert again.consumed == 30 and again.consumes == 1 and again.created_ms == state.created_ms
    got = await credit_store.get(key)
    assert (got.remaining, got.capacity, got.consumed) == (50, 50, 30)
    assert await credit_store.delete(key) is True
    assert await credit_store.delete(key) is False
    with pytest.raises(UnknownKey, match="no credit budget"):
        await credit_store.get(key)
    with pytest.raises(UnknownKey):
        await credit_store.consume(key, 1)


async def test_consume_is_all_or_nothing_and_counts(credit_store: CreditStore) -> None:
    key = new_key()
    await credit_store.put(key, 10)
    answers = [await credit_store.consume(key, 3) for _ in range(5)]
    assert [a.allowed for a in answers] == [True, True, True, False, False]
    assert [a.remaining for a in answers] == [7, 4, 1, 1, 1]
    assert answers[-1].next_refill_ms is None  # no refill configured
    state = await credit_store.get(key)
    assert (state.remaining, state.consumed, state.consumes, state.refused) == (1, 9, 3, 2)
    assert (await credit_store.consume(key, 1)).remaining == 0


async def test_many_clients_at_once_never_overspend(make_store: Callable[..., CreditStore]) -> None:
    stores = [make_store() for _ in range(10)]
    key = new_key()
    await stores[0].put(key, 100)
    answers = await asyncio.gather(*(stores[i % 10].consume(key, 3) for i in range(400)))
    assert sum(a.allowed for a in answers) == 33
    assert min(a.remaining for a in answers) == 1
    state = await stores[0].get(key)
    assert (state.remaining, state.consumed, state.consumes, state.refused) == (1, 99, 33, 367)


async def test_a_retried_request_id_never_charges_twice(make_store: Callable[..., CreditStore]) -> None:
    a, b = make_store(), make_store()
    key = new_key()
    await a.put(key, 10)
    first = await a.consume(key, 4, request_id="req-1")
    assert first.allowed and not first.replayed and first.remaining == 6
    await a.consume(key, 1)
    # Another instance retries: the original answer, nothing charged.
    retry = await b.consume(key, 4, request_id="req-1")
    assert retry.allowed and retry.replayed and retry.remaining == 6
    assert (await a.get(key)).remaining == 5
    with pytest.raises(RequestConflict, match="already used with cost 4, not 5"):
        await b.consume(key, 5, request_id="req-1")
    # Concurrent retries of one id: exactly one charge.
    answers = await asyncio.gather(*(s.consume(key, 2, request_id="req-2") for s in (a, b) * 10))
    assert sum(not x.replayed for x in answers) == 1 and all(x.allowed for x in answers)
    assert (await a.get(key)).remaining == 3
    # Request ids belong to one key: the same id on another key is a new request.
    other = new_key()
    await a.put(other, 10)
    assert not (await a.consume(other, 4, request_id="req-1")).replayed


async def test_a_refused_request_is_not_remembered(credit_store: CreditStore) -> None:
    key = new_key()
    await credit_store.put(key, 2)
    refused = await credit_store.consume(key, 5, request_id="big")
    assert not refused.allowed and not refused.replayed
    await credit_store.put(key, 10)
    later = await credit_store.consume(key, 5, request_id="big")
    assert later.allowed and not later.replayed and later.remaining == 5


async def test_refill_by_redis_time_is_capped_at_the_credits(credit_store: CreditStore) -> None:
    key = new_key()
    await credit_store.put(key, 5, Refill(2, 1))
    assert (await credit_store.consume(key, 5)).remaining == 0
    refused = await credit_store.consume(key, 1)
    assert not refused.allowed and refused.next_refill_ms is not None and 0 < refused.next_refill_ms <= 1000
    await asyncio.sleep(2.3)
    state = await credit_store.get(key)
    periods = (state.redis_time_ms - state.updated_ms) // 1000  # full periods by Redis's clock
    assert periods >= 2 and state.remaining == state.refilled == min(5, 2 * periods)
    await asyncio.sleep(1.0)
    state = await credit_store.get(key)
    assert state.remaining == 5 and state.refilled == 5  # capped at the key's credits
    # The schedule keeps its phase: the next refill is less than a period away.
    assert state.next_refill_ms is not None and 0 <= state.next_refill_ms <= 1000


async def test_reserved_credits_count_against_the_refill_cap(credit_store: CreditStore) -> None:
    key = new_key()
    await credit_store.put(key, 10, Refill(10, 1))
    held = await credit_store.reserve(key, 6)
    assert held.allowed and held.remaining == 4
    await asyncio.sleep(1.2)
    state = await credit_store.get(key)
    assert (state.remaining, state.reserved) == (4, 6)  # full: 4 + 6 = 10
    assert held.reservation_id is not None
    settled = await credit_store.settle(key, held.reservation_id, 1)
    assert (settled.charged, settled.refunded, settled.remaining) == (1, 5, 9)


async def test_expiry(credit_store: CreditStore) -> None:
    key = new_key()
    await credit_store.put(key, 10, expires_in_seconds=2)
    held = await credit_store.reserve(key, 3)
    assert held.allowed
    assert (await credit_store.consume(key, 1)).remaining == 6
    await asyncio.sleep(2.2)
    with pytest.raises(UnknownKey):
        await credit_store.get(key)
    with pytest.raises(UnknownKey):
        await credit_store.consume(key, 1)
    # Every key of the budget expired with it: nothing is left behind.
    keys = credit_store.keys.credits(credit_key_id(key))
    assert await credit_store.client.exists(keys.budget, keys.deadlines, keys.reserved) == 0
    # A new PUT without expiry makes a key that stays.
    await credit_store.put(key, 5, expires_in_seconds=1)
    await credit_store.put(key, 5)
    await asyncio.sleep(1.2)
    assert (await credit_store.get(key)).remaining == 5


async def test_reserve_and_settle(credit_store: CreditStore) -> None:
    key = new_key()
    await credit_store.put(key, 100)
    r = await credit_store.reserve(key, 40)
    assert r.allowed and r.remaining == 60 and r.reservation_id and r.deadline_ms
    state = await credit_store.get(key)
    assert (state.remaining, state.reserved, state.open_reservations) == (60, 40, 1)
    assert not (await credit_store.reserve(key, 61)).allowed  # does not fit: nothing held
    assert not (await credit_store.consume(key, 61)).allowed
    s = await credit_store.settle(key, r.reservation_id, 25)
    assert (s.reserved, s.charged, s.refunded, s.uncharged, s.remaining, s.late) == (40, 25, 15, 0, 75, False)
    # Settling again replays the first answer; a different actual is a conflict.
    again = await credit_store.settle(key, r.reservation_id, 25)
    assert again.replayed and again.remaining == 75
    with pytest.raises(RequestConflict, match="already settled with actual 25"):
        await credit_store.settle(key, r.reservation_id, 30)
    state = await credit_store.get(key)
    assert (state.remaining, state.reserved, state.consumed, state.settled) == (75, 0, 25, 1)


async def test_settle_charges_overage_but_never_below_zero(credit_store: CreditStore) -> None:
    key = new_key()
    await credit_store.put(key, 100)
    r = await credit_store.reserve(key, 30)
    assert r.reservation_id is not None
    over = await credit_store.settle(key, r.reservation_id, 50)  # 20 beyond, taken from remaining
    assert (over.charged, over.refunded, over.uncharged, over.remaining) == (50, 0, 0, 50)
    r = await credit_store.reserve(key, 40)
    assert r.reservation_id is not None
    huge = await credit_store.settle(key, r.reservation_id, 100)  # 60 beyond, only 10 left
    assert (huge.charged, huge.uncharged, huge.remaining) == (50, 50, 0)
    state = await credit_store.get(key)
    assert (state.remaining, state.consumed, state.overage) == (0, 100, 50)


async def test_unknown_and_malformed_reservations(credit_store: CreditStore) -> None:
    key = new_key()
    await credit_store.put(key, 10)
    with pytest.raises(UnknownReservation, match="not a reservation id"):
        await credit_store.settle(key, "nope", 1)
    future = f"{10**13 * 9}-0123456789abcdef"
    with pytest.raises(UnknownReservation, match="no open reservation"):
        await credit_store.settle(key, future, 1)
    r = await credit_store.reserve(key, 5)
    assert r.reservation_id is not None
    with pytest.raises(UnknownKey):
        await credit_store.settle(new_key(), r.reservation_id, 1)


async def test_reservations_of_a_dead_holder_come_back_at_their_deadline(
    make_store: Callable[..., CreditStore],
) -> None:
    holder, other = make_store(), make_store()
    key = new_key()
    await holder.put(key, 10)
    held = [await holder.reserve(key, 3, ttl_seconds=2) for _ in range(3)]
    assert [h.allowed for h in held] == [True, True, True]
    await holder.close()  # the holder dies without settling
    assert not (await other.consume(key, 2)).allowed
    await asyncio.sleep(2.2)
    state = await other.get(key)
    assert (state.remaining, state.reserved, state.open_reservations, state.expired) == (10, 0, 0, 3)
    # A holder that was only slow settles late: the work is charged from what is there.
    assert held[0].reservation_id is not None
    late = await other.settle(key, held[0].reservation_id, 4)
    assert (late.late, late.reserved, late.charged, late.refunded, late.remaining) == (True, 0, 4, 0, 6)
    assert (await other.settle(key, held[0].reservation_id, 4)).replayed


async def test_a_settle_long_after_the_deadline_is_refused(make_store: Callable[..., CreditStore]) -> None:
    store = make_store(request_ttl_seconds=1)
    key = new_key()
    await store.put(key, 10)
    r = await store.reserve(key, 4, ttl_seconds=1)
    assert r.reservation_id is not None
    await asyncio.sleep(2.2)
    with pytest.raises(UnknownReservation, match="can no longer be settled"):
        await store.settle(key, r.reservation_id, 4)
    assert (await store.get(key)).remaining == 10


async def test_reserve_with_a_request_id_is_idempotent(credit_store: CreditStore) -> None:
    key = new_key()
    await credit_store.put(key, 10)
    first = await credit_store.reserve(key, 4, request_id="job-1")
    retry = await credit_store.reserve(key, 4, request_id="job-1")
    assert retry.replayed and retry.reservation_id == first.reservation_id and retry.remaining == 6
    with pytest.raises(RequestConflict, match="reserve 4, not 5"):
        await credit_store.reserve(key, 5, request_id="job-1")
    # A consume may reuse the id of a reserve: they are different requests.
    assert not (await credit_store.consume(key, 1, request_id="job-1")).replayed
    assert (await credit_store.get(key)).remaining == 5


async def test_replacing_keeps_open_reservations(credit_store: CreditStore) -> None:
    key = new_key()
    await credit_store.put(key, 100)
    r = await credit_store.reserve(key, 30)
    state, _ = await credit_store.put(key, 50)
    assert (state.remaining, state.reserved) == (20, 30)
    assert r.reservation_id is not None
    assert (await credit_store.settle(key, r.reservation_id, 10)).remaining == 40
    # Lowered below what is reserved: remaining is 0 and a refund never lifts it above the credits.
    r2 = await credit_store.reserve(key, 40)
    state, _ = await credit_store.put(key, 10)
    assert (state.remaining, state.reserved) == (0, 40)
    assert r2.reservation_id is not None
    assert (await credit_store.settle(key, r2.reservation_id, 0)).remaining == 10


async def test_random_mix_keeps_every_credit_accounted_for(make_store: Callable[..., CreditStore]) -> None:
    stores = [make_store() for _ in range(6)]
    key = new_key()
    await stores[0].put(key, 1000)
    rng = random.Random(8)

    async def worker(store: CreditStore, seed: int) -> None:
        r = random.Random(seed)
        for _ in range(60):
            if r.random() < 0.5:
                await store.consume(key, r.randint(1, 20))
            else:
                held = await store.reserve(key, r.randint(1, 30))
                if held.allowed and held.reservation_id and r.random() < 0.9:
                    await store.settle(key, held.reservation_id, r.randint(0, 40))

    await asyncio.gather(*(worker(stores[i % 6], rng.randint(0, 10**6)) for i in range(24)))
    state = await stores[0].get(key)
    assert state.remaining >= 0
    # Nothing created or lost: every credit is remaining, held or charged.
    assert state.remaining + state.reserved + state.consumed == 1000


async def test_raw_keys_never_appear_in_redis(credit_store: CreditStore) -> None:
    key = new_key("secret-api-key")
    await credit_store.put(key, 10)
    await credit_store.consume(key, 1, request_id="a-request")
    await credit_store.reserve(key, 1, request_id="another")
    names = [k.decode() for k in await credit_store.client.keys("*")]
    assert names and not any(key in n or "a-request" in n for n in names)
    assert all(n.startswith("fl:{team-a/chat}:") for n in names)
    assert len({key_slot(n.encode()) for n in names}) == 1


async def test_every_operation_works_on_redis_cluster() -> None:
    # A one-node cluster still refuses scripts whose keys are in different slots (CROSSSLOT).
    with new_server(cluster=True) as server:
        store = CreditStore.from_url(server.url, "team-a", "chat")
        try:
            key = new_key()
            await store.put(key, 10)
            assert (await store.consume(key, 2, request_id="r")).allowed
            held = await store.reserve(key, 3, request_id="s")
            assert held.reservation_id is not None
            assert (await store.settle(key, held.reservation_id, 1)).remaining == 7
            assert (await store.get(key)).remaining == 7
            assert await store.delete_all() == 1
        finally:
            await store.close()


async def test_delete_all_removes_every_budget_of_the_policy(credit_store: CreditStore) -> None:
    keys = [new_key() for _ in range(3)]
    for k in keys:
        await credit_store.put(k, 5)
        await credit_store.reserve(k, 1)
    assert await credit_store.delete_all() == 3
    assert await credit_store.client.keys("fl:*credits:*[0-9a-f]") == []
    for k in keys:
        with pytest.raises(UnknownKey):
            await credit_store.get(k)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s, k: s.consume(k, 0), "cost: 0 is not valid"),
        (lambda s, k: s.consume(k, -3), "cost: -3 is not valid"),
        (lambda s, k: s.consume(k, 1.5), "cost: 1.5 is not valid: expected an integer"),
        (lambda s, k: s.consume(k, True), "cost: True is not valid: expected an integer"),
        (lambda s, k: s.consume(k, 1, request_id="has space"), "requestId: 'has space' is not valid"),
        (lambda s, k: s.reserve(k, 0), "amount: 0 is not valid"),
        (lambda s, k: s.reserve(k, 1, ttl_seconds=0), "ttlSeconds: 0 is not valid"),
        (lambda s, k: s.settle(k, "1-0123456789abcdef", -1), "actual: -1 is not valid"),
        (lambda s, k: s.put(k, -1), "credits: -1 is not valid"),
        (lambda s, k: s.put("short", 1), r"key: not a valid API key \(5 characters\)"),
    ],
)
async def test_bad_arguments_name_the_field(credit_store: CreditStore, call: Callable, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidInput, match=message):
        await call(credit_store, new_key())


async def test_an_invalid_key_is_never_echoed(credit_store: CreditStore) -> None:
    with pytest.raises(InvalidInput) as info:
        await credit_store.consume("sk live secret with spaces", 1)
    assert "secret" not in str(info.value)


async def test_an_unreachable_redis_is_store_unavailable() -> None:
    from limiter.redis.plumbing import StoreUnavailable

    with new_server() as server:
        store = CreditStore.from_url(server.url, "team-a", "chat")
        try:
            await store.put(new_key(), 1)
            server.stop()
            with pytest.raises(StoreUnavailable, match="credits consume"):
                await store.consume(new_key(), 1)
        finally:
            await store.close()


async def test_a_client_with_its_own_connection_sees_the_same_budget(credit_store: CreditStore) -> None:
    key = new_key()
    await credit_store.put(key, 7)
    kwargs = credit_store.client.connection_pool.connection_kwargs
    client = aioredis.Redis(host=kwargs["host"], port=kwargs["port"])
    try:
        other = CreditStore(client, "team-a", "chat")
        assert (await other.consume(key, 7)).remaining == 0
        assert (await credit_store.get(key)).remaining == 0
    finally:
        await client.aclose()
