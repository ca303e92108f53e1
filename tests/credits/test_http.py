"""The /api/keys routes on three real instances: status codes, bodies, admin token, bad input,
idempotent retries across instances, reserve and settle, refill and expiry over time."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.credits.conftest import Nodes, call, get_key, new_key, put_key

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


async def consume(
    session: aiohttp.ClientSession, base: str, key: str, body: Any
) -> tuple[int, Any, dict[str, str]]:
    return await call(session, "POST", f"{base}/api/keys/{key}/consume", body)


async def test_put_get_delete(three: Nodes, session: aiohttp.ClientSession) -> None:
    key = new_key()
    a, b, c = three.urls
    doc = await put_key(
        session, a, key, credits=100, refill={"amount": 10, "everySeconds": 60}, expiresInSeconds=600
    )
    assert doc["created"] is True and doc["remaining"] == 100 and doc["credits"] == 100
    assert doc["refill"]["amount"] == 10 and doc["refill"]["everySeconds"] == 60
    assert 0 < doc["expiresInSeconds"] <= 600 and key not in str(doc)
    status, again, _ = await call(session, "PUT", f"{b}/api/keys/{key}", {"credits": 50}, admin=True)
    assert status == 200 and again["created"] is False and again["refill"] is None
    assert (await consume(session, c, key, {"cost": 5}))[1] == {"allowed": True, "remaining": 45, "cost": 5}
    state = await get_key(session, a, key)
    assert state["remaining"] == 45 and state["reserved"] == 0
    assert state["totals"]["consumed"] == 5 and state["totals"]["consumes"] == 1
    assert (await call(session, "DELETE", f"{b}/api/keys/{key}", admin=True))[:2] == (200, {"deleted": True})
    for method, path, body in (
        ("GET", "", None),
        ("DELETE", "", None),
        ("POST", "/consume", {"cost": 1}),
        ("POST", "/reservations", {"amount": 1}),
        ("POST", "/reservations/1795305508327-601fd18bcc01c106/settle", {"actual": 1}),
    ):
        status, doc, _ = await call(session, method, f"{c}/api/keys/{key}{path}", body, admin=True)
        assert status == 404, (method, path, doc)
        assert doc["error"].startswith("key: no credit budget for this API key (sha256:")


async def test_admin_routes_need_the_admin_token_and_consume_does_not(
    three: Nodes, session: aiohttp.ClientSession
) -> None:
    key = new_key()
    url = f"{three.url(0)}/api/keys/{key}"
    for method, body in (("PUT", {"credits": 1}), ("GET", None), ("DELETE", None)):
        status, doc, headers = await call(session, method, url, body)
        assert status == 401 and "admin token" in doc["error"] and headers["WWW-Authenticate"] == "Bearer"
        async with session.request(method, url, json=body, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
    await put_key(session, three.url(0), key, credits=3)
    assert (await consume(session, three.url(1), key, {"cost": 3}))[0] == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"cost": 0}, "cost: 0 is not valid: input should be greater than or equal to 1"),
        ({"cost": -5}, "cost: -5 is not valid"),
        ({"cost": 1.5}, "cost: 1.5 is not valid: input should be a valid integer"),
        ({"cost": 2.0}, "cost: 2.0 is not valid"),
        ({"cost": "5"}, 'cost: "5" is not valid'),
        ({"cost": True}, "cost: true is not valid"),
        ({"cost": None}, "cost: null is not valid"),
        ({}, "cost: required field is missing"),
        ({"cost": 1, "extra": 1}, "extra: unknown field"),
        ({"cost": 1, "requestId": "has spaces"}, "requestId: 'has spaces' is not valid"),
        ({"cost": 10**13}, "cost: 10000000000000 is not valid"),
        (b'{"cost": ', "body: not valid JSON"),
        (b"[1, 2]", "body: expected a JSON object, got list"),
        (b"", "body: a JSON object is required"),
    ],
)
async def test_bad_consume_bodies_are_400_naming_the_field(
    three: Nodes, session: aiohttp.ClientSession, body: Any, message: str
) -> None:
    key = new_key()
    await put_key(session, three.url(0), key, credits=10)
    url = f"{three.url(1)}/api/keys/{key}/consume"
    if isinstance(body, bytes):
        status, doc, _ = await call(session, "POST", url, raw=body)
    else:
        status, doc, _ = await call(session, "POST", url, body)
    assert status == 400, doc
    assert doc["error"].startswith(message) and doc["status"] == 400
    assert (await get_key(session, three.url(2), key))["remaining"] == 10


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/reservations", {"amount": 0}, "amount: 0 is not valid"),
        ("/reservations", {"amount": 1, "ttlSeconds": 0}, "ttlSeconds: 0 is not valid"),
        ("/reservations", {"amount": 1, "ttlSeconds": 86401}, "ttlSeconds: 86401 is not valid"),
        ("/reservations/1795305508327-601fd18bcc01c106/settle", {"actual": -1}, "actual: -1 is not valid"),
        ("/reservations/1795305508327-601fd18bcc01c106/settle", {}, "actual: required field is missing"),
        ("", {"credits": -1}, "credits: -1 is not valid"),
        ("", {"credits": 1, "refill": {"amount": 1}}, "refill.everySeconds: required field is missing"),
        ("", {"credits": 1, "refill": {"amount": 0, "everySeconds": 1}}, "refill.amount: 0 is not valid"),
        ("", {"credits": 1, "expiresInSeconds": 0}, "expiresInSeconds: 0 is not valid"),
        ("", {"credits": 1.5}, "credits: 1.5 is not valid"),
    ],
)
async def test_bad_bodies_of_other_routes(
    three: Nodes, session: aiohttp.ClientSession, path: str, body: Any, message: str
) -> None:
    key = new_key()
    await put_key(session, three.url(0), key, credits=10)
    status, doc, _ = await call(
        session, "PUT" if not path else "POST", f"{three.url(1)}/api/keys/{key}{path}", body, admin=True
    )
    assert status == 400, doc
    assert doc["error"].startswith(message)


@pytest.mark.parametrize("key", ["short", "has.a~tilde" + "x" * 250, "bad%24char-1234", "sp%20ace-12345"])
async def test_keys_that_break_the_rules_are_400(
    three: Nodes, session: aiohttp.ClientSession, key: str
) -> None:
    for method, path, body, admin in (
        ("PUT", "", {"credits": 1}, True),
        ("GET", "", None, True),
        ("POST", "/consume", {"cost": 1}, False),
    ):
        status, doc, _ = await call(
            session, method, f"{three.url(0)}/api/keys/{key}{path}", body, admin=admin
        )
        assert status == 400, (method, doc)
        assert doc["error"].startswith("key: not a valid API key (") and "8 to 256 characters" in doc["error"]


async def test_refused_consume_is_429_with_remaining_and_next_refill(
    three: Nodes, session: aiohttp.ClientSession
) -> None:
    key, plain = new_key(), new_key()
    await put_key(session, three.url(0), key, credits=4, refill={"amount": 1, "everySeconds": 30})
    status, doc, headers = await consume(session, three.url(1), key, {"cost": 5})
    assert status == 429 and doc["allowed"] is False and doc["remaining"] == 4
    assert 0 < doc["nextRefillSeconds"] <= 30 and 1 <= int(headers["Retry-After"]) <= 30
    assert doc["reason"] == "credits_exhausted" and doc["limit"] == {"name": "credits", "value": 4}
    assert doc["retryAfterSeconds"] == int(headers["Retry-After"])
    await put_key(session, three.url(0), plain, credits=4)
    status, doc, headers = await consume(session, three.url(2), plain, {"cost": 5})
    assert (
        status == 429
        and doc["remaining"] == 4
        and "nextRefillSeconds" not in doc
        and "Retry-After" not in headers
    )
    assert doc["reason"] == "credits_exhausted" and doc["retryAfterSeconds"] is None  # no refill: never


async def test_retries_with_a_request_id_charge_once_on_any_instance(
    three: Nodes, session: aiohttp.ClientSession
) -> None:
    key = new_key()
    await put_key(session, three.url(0), key, credits=100)
    body = {"cost": 7, "requestId": "7f0c2a9e-1c3b-4d5e"}
    answers = await asyncio.gather(*(consume(session, three.urls[i % 3], key, body) for i in range(30)))
    assert {status for status, _, _ in answers} == {200}
    assert sum(not doc["replayed"] for _, doc, _ in answers) == 1
    assert {doc["remaining"] for _, doc, _ in answers} == {93}
    assert (await get_key(session, three.url(1), key))["remaining"] == 93
    status, doc, _ = await consume(session, three.url(2), key, {"cost": 8, "requestId": "7f0c2a9e-1c3b-4d5e"})
    assert status == 409 and "already used with cost 7" in doc["error"]


async def test_reserve_then_settle_on_other_instances(three: Nodes, session: aiohttp.ClientSession) -> None:
    key = new_key()
    a, b, c = three.urls
    await put_key(session, a, key, credits=100)
    status, held, _ = await call(session, "POST", f"{b}/api/keys/{key}/reservations", {"amount": 60})
    assert status == 200 and held["allowed"] and held["remaining"] == 40 and held["deadline"] > 0
    status, refused, _ = await call(session, "POST", f"{c}/api/keys/{key}/reservations", {"amount": 41})
    assert status == 429 and refused == {**refused, "allowed": False, "remaining": 40}
    state = await get_key(session, c, key)
    assert (state["remaining"], state["reserved"], state["openReservations"]) == (40, 60, 1)
    settle_url = f"{c}/api/keys/{key}/reservations/{held['reservationId']}/settle"
    status, doc, _ = await call(session, "POST", settle_url, {"actual": 45})
    assert status == 200
    assert doc == {
        "reservationId": held["reservationId"],
        "reserved": 60,
        "actual": 45,
        "charged": 45,
        "refunded": 15,
        "uncharged": 0,
        "remaining": 55,
        "late": False,
        "replayed": False,
    }
    status, again, _ = await call(session, "POST", settle_url.replace(c, a), {"actual": 45})
    assert status == 200 and again["replayed"] is True and again["remaining"] == 55
    assert (await call(session, "POST", settle_url, {"actual": 44}))[0] == 409
    unknown = f"{a}/api/keys/{key}/reservations/{10**13 * 9}-0123456789abcdef/settle"
    status, doc, _ = await call(session, "POST", unknown, {"actual": 1})
    assert status == 404 and doc["error"].startswith("reservationId: ")
    status, doc, _ = await call(
        session, "POST", f"{a}/api/keys/{key}/reservations/garbage/settle", {"actual": 1}
    )
    assert status == 404
    assert (await get_key(session, b, key))["remaining"] == 55


async def test_refill_and_expiry_over_time(three: Nodes, session: aiohttp.ClientSession) -> None:
    refilled, expiring = new_key(), new_key()
    await put_key(session, three.url(0), refilled, credits=3, refill={"amount": 1, "everySeconds": 1})
    await put_key(session, three.url(0), expiring, credits=3, expiresInSeconds=1)
    assert (await consume(session, three.url(1), refilled, {"cost": 3}))[0] == 200
    status, doc, _ = await consume(session, three.url(2), refilled, {"cost": 1})
    assert status == 429 and doc["nextRefillSeconds"] <= 1
    await asyncio.sleep(2.2)
    state = await get_key(session, three.url(1), refilled)
    # Two full periods at least (more on a slow machine), one credit each, capped at 3.
    assert state["totals"]["refilled"] >= 2 and state["remaining"] == min(3, state["totals"]["refilled"])
    status, doc, _ = await consume(session, three.url(2), refilled, {"cost": 2})
    assert status == 200 and doc["remaining"] >= 0
    assert (await consume(session, three.url(0), expiring, {"cost": 1}))[0] == 404
    assert (await call(session, "GET", f"{three.url(1)}/api/keys/{expiring}", admin=True))[0] == 404
