"""The pure side of credit budgets: key, request and reservation id rules, amounts, JSON shapes,
key names. No Redis, no HTTP."""

from __future__ import annotations

import pytest

from limiter.core.credits import (
    MAX_CREDITS,
    STATE_FIELDS,
    Consumption,
    InvalidInput,
    KeyState,
    Refill,
    UnknownReservation,
    check_amount,
    check_api_key,
    check_request_id,
    reservation_deadline_ms,
)
from limiter.redis.keys import PolicyKeys, credit_key_id


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("sk-0123456789abcdef", True),
        ("team.a_key~1", True),
        ("x" * 8, True),
        ("x" * 256, True),
        ("x" * 7, False),
        ("x" * 257, False),
        ("has space-12", False),
        ("brace{tag}-12", False),
        ("slash/inside1", False),
        ("unicodé-key-1", False),
        ("", False),
    ],
)
def test_api_key_rules(key: str, ok: bool) -> None:
    if ok:
        assert check_api_key(key) == key
    else:
        with pytest.raises(InvalidInput, match=r"^key: not a valid API key \(\d+ characters\)") as info:
            check_api_key(key)
        assert key not in str(info.value) or not key


@pytest.mark.parametrize(
    ("request_id", "ok"),
    [("7f0c2a9e-1c3b-4d5e-8f9a-0b1c2d3e4f5a", True), ("job:42", True), ("", False), ("a b", False)],
)
def test_request_id_rules(request_id: str, ok: bool) -> None:
    if ok:
        assert check_request_id(request_id) == request_id
    else:
        with pytest.raises(InvalidInput, match=r"^requestId: "):
            check_request_id(request_id)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (1, True),
        (MAX_CREDITS, True),
        (0, False),
        (-1, False),
        (MAX_CREDITS + 1, False),
        (True, False),
        (2.0, False),
    ],
)
def test_amounts_are_integers_in_range(value: int, ok: bool) -> None:
    if ok:
        assert check_amount("cost", value) == value
    else:
        with pytest.raises(InvalidInput, match=r"^cost: "):
            check_amount("cost", value)


def test_reservation_ids_carry_their_deadline() -> None:
    assert reservation_deadline_ms("1795305508327-601fd18bcc01c106") == 1795305508327
    for bad in ("", "abc", "1795305508327-601FD18BCC01C106", "1795305508327-601fd18b", "-601fd18bcc01c106"):
        with pytest.raises(UnknownReservation, match=r"^reservationId: "):
            reservation_deadline_ms(bad)


def test_refill_is_validated() -> None:
    with pytest.raises(InvalidInput, match=r"^refill\.everySeconds: 0 is not valid"):
        Refill(1, 0)
    with pytest.raises(InvalidInput, match=r"^refill\.amount: 0 is not valid"):
        Refill(0, 1)


def test_key_state_json() -> None:
    values = {name: i + 1 for i, name in enumerate(STATE_FIELDS)}
    values.update(refillAmount=5, refillEveryMs=60_000, expiresAtMs=0)
    reply = [values[f] for f in STATE_FIELDS] + [1_000, 1_500, 2]
    doc = KeyState.from_reply("ab" * 32, reply).to_json()
    assert doc["keyId"] == "sha256:abababababab"
    assert doc["refill"] == {"amount": 5, "everySeconds": 60, "nextRefillSeconds": 1.5}
    assert doc["expiresAt"] is None and doc["expiresInSeconds"] is None
    assert doc["openReservations"] == 2
    assert set(doc["totals"]) == {
        "consumed",
        "refilled",
        "overage",
        "consumes",
        "refused",
        "reservations",
        "settled",
        "expiredReservations",
    }


def test_consumption_json() -> None:
    assert Consumption(True, 5, 3, None).to_json() == {"allowed": True, "remaining": 5, "cost": 3}
    refused = Consumption(False, 2, 3, 1500, request_id="r", replayed=False).to_json()
    assert refused["allowed"] is False and refused["remaining"] == 2 and refused["nextRefillSeconds"] == 1.5
    assert refused["status"] == 429 and "not enough credits" in refused["error"]


def test_credit_keys_share_the_policy_tag_and_hide_the_api_key() -> None:
    keys = PolicyKeys("team-a", "chat").credits(credit_key_id("sk-secret-0123"))
    names = [*keys.script_keys, keys.request("consume", "r1")]
    assert all(n.startswith("fl:{team-a/chat}:credits:") for n in names)
    assert not any("sk-secret" in n or "r1" in n.rsplit(":", 1)[1] for n in names)
    assert keys.request("consume", "r1") != keys.request("reserve", "r1")
    with pytest.raises(ValueError, match=r"^key_id: "):
        PolicyKeys("team-a", "chat").credits("sk-secret-0123")
