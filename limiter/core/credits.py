"""Credit budgets per API key: the rules and the values, without I/O.

What a key, a request id and a reservation id may look like, the limits on amounts, and the
answers of the credits scripts (``limiter/redis/lua/credits_*.lua``) parsed into dataclasses with their
JSON shape. :mod:`limiter.redis.creditstore` runs the scripts; :mod:`limiter.web.credits` serves them.

Credits are integers in whatever unit a team chooses (tokens, or cents). All arithmetic happens in
Redis's Lua, whose numbers are doubles: amounts are capped at :data:`MAX_CREDITS` so every sum
stays exact (below 2^53).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Largest balance, cost, reservation or refill amount, in credits: sums of a few of them stay far
#: below 2^53, where Lua's doubles stop being exact integers.
MAX_CREDITS = 10**12
#: Longest refill period and key lifetime, in seconds (ten years).
MAX_SECONDS = 10 * 365 * 86400
#: How long an allowed consume or reserve is remembered under its request id, in seconds: a retry
#: within this time gets the original answer and charges nothing. Settlements are remembered this
#: long after the later of the settle and the reservation's deadline. An hour covers any client's
#: retries; each remembered answer costs Redis about 300 bytes for that long.
REQUEST_TTL_SECONDS = 3600
#: Reservation lifetime when the caller names none, in seconds (the lease expiry of SPEC section 6).
DEFAULT_RESERVATION_TTL_SECONDS = 600
#: Longest reservation lifetime, in seconds.
MAX_RESERVATION_TTL_SECONDS = 86400

#: API keys: 8 to 256 characters that need no escaping in a URL path or a header (RFC 3986
#: unreserved), so ``/api/keys/{key}`` and ``Authorization: Bearer <key>`` carry them unchanged.
API_KEY_RULE = "8 to 256 characters: letters, digits, '.', '_', '~' and '-'"
_API_KEY = re.compile(r"^[A-Za-z0-9._~-]{8,256}$")
REQUEST_ID_RULE = "1 to 128 characters: letters, digits, '.', '_', ':', '~' and '-'"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:~-]{1,128}$")
#: "<deadline, ms of Redis TIME>-<16 hex digits>", as credits_reserve.lua builds it.
_RESERVATION_ID = re.compile(r"^(\d{1,16})-([0-9a-f]{16})$")


class CreditError(Exception):
    """A credits operation that cannot be done; ``status`` is the HTTP status it maps to."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(CreditError, ValueError):
    """A bad argument; the message names the field, the value where safe, and what is valid."""


class UnknownKey(CreditError):
    """No credit budget for this API key (never created, deleted, or expired)."""

    status = 404

    @classmethod
    def of(cls, key_id: str) -> UnknownKey:
        """The error for the key whose id is ``key_id``, named by its fingerprint only."""
        return cls(f"key: no credit budget for this API key ({fingerprint(key_id)})")


class UnknownReservation(CreditError):
    """No open reservation with this id, and none that expired recently enough to settle late."""

    status = 404


class RequestConflict(CreditError):
    """A request id (or a reservation's settlement) reused with different arguments."""

    status = 409


def fingerprint(key_id: str) -> str:
    """How messages name an API key: the start of its key id, never the key itself."""
    return f"sha256:{key_id[:12]}"


def check_api_key(api_key: str) -> str:
    """``api_key`` if it fits :data:`API_KEY_RULE`; the error never echoes the key."""
    if not _API_KEY.match(api_key):
        raise InvalidInput(f"key: not a valid API key ({len(api_key)} characters); expected {API_KEY_RULE}")
    return api_key


def check_request_id(request_id: str) -> str:
    """``request_id`` if it fits :data:`REQUEST_ID_RULE`."""
    if not _REQUEST_ID.match(request_id):
        shown = request_id if len(request_id) <= 40 else request_id[:40] + "..."
        raise InvalidInput(f"requestId: {shown!r} is not valid: expected {REQUEST_ID_RULE}")
    return request_id


def reservation_deadline_ms(reservation_id: str) -> int:
    """The deadline (ms of Redis TIME) a reservation id carries; :class:`UnknownReservation` if the
    id is not one this service could have issued."""
    match = _RESERVATION_ID.match(reservation_id)
    if not match:
        raise UnknownReservation(
            "reservationId: not a reservation id this service issues ('<deadline ms>-<16 hex digits>')"
        )
    return int(match.group(1))


def check_amount(field: str, value: int, *, minimum: int = 1, maximum: int = MAX_CREDITS) -> int:
    """``value`` if it is an integer within [minimum, maximum]; bools are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{field}: {value!r} is not valid: expected an integer")
    if not minimum <= value <= maximum:
        raise InvalidInput(f"{field}: {value} is not valid: expected an integer from {minimum} to {maximum}")
    return value


def _seconds(ms: int) -> float:
    return round(ms / 1000, 3)


@dataclass(frozen=True, slots=True)
class Refill:
    """``amount`` credits come back every ``every_seconds``, up to the key's capacity."""

    amount: int
    every_seconds: int

    def __post_init__(self) -> None:
        check_amount("refill.amount", self.amount)
        check_amount("refill.everySeconds", self.every_seconds, maximum=MAX_SECONDS)


#: The order of the budget fields in get and put replies (STATE_FIELDS in credits_lib.lua).
STATE_FIELDS = (
    "remaining",
    "capacity",
    "reserved",
    "refillAmount",
    "refillEveryMs",
    "lastRefillMs",
    "expiresAtMs",
    "nextDeadlineMs",
    "createdMs",
    "updatedMs",
    "consumed",
    "refilled",
    "overage",
    "consumes",
    "refused",
    "reservations",
    "settled",
    "expired",
)


@dataclass(frozen=True, slots=True)
class KeyState:
    """One API key's budget as Redis holds it, after expired reservations and due refills."""

    key_id: str
    remaining: int
    """Credits that can be spent now."""
    capacity: int
    """The credits set by the last PUT; refills never lift remaining + reserved above it."""
    reserved: int
    """Credits held by open reservations."""
    open_reservations: int
    refill: Refill | None
    next_refill_ms: int | None
    """ms until the next refill (Redis time), None without refills."""
    expires_at_ms: int | None
    """When the key disappears, ms since the epoch (Redis time), None for never."""
    redis_time_ms: int
    created_ms: int
    updated_ms: int
    consumed: int
    """Credits charged since the key was created: consumes and settlements (replacing keeps it)."""
    refilled: int
    """Credits added by refills since the key was created."""
    overage: int
    """Actual usage settled beyond what remaining could pay (not charged, not carried as debt)."""
    consumes: int
    refused: int
    reservations: int
    settled: int
    expired: int
    """Reservations whose deadline passed before they were settled (their credits went back)."""

    @classmethod
    def from_reply(cls, key_id: str, reply: Sequence[int]) -> KeyState:
        """Parse the state of credits_get.lua / credits_put.lua (after any leading status)."""
        v = dict(zip(STATE_FIELDS, (int(x) for x in reply), strict=False))
        n = len(STATE_FIELDS)
        now, next_refill, open_count = int(reply[n]), int(reply[n + 1]), int(reply[n + 2])
        refill = None
        if v["refillAmount"] > 0:
            refill = Refill(v["refillAmount"], v["refillEveryMs"] // 1000)
        return cls(
            key_id=key_id,
            remaining=v["remaining"],
            capacity=v["capacity"],
            reserved=v["reserved"],
            open_reservations=open_count,
            refill=refill,
            next_refill_ms=next_refill if next_refill >= 0 else None,
            expires_at_ms=v["expiresAtMs"] or None,
            redis_time_ms=now,
            created_ms=v["createdMs"],
            updated_ms=v["updatedMs"],
            consumed=v["consumed"],
            refilled=v["refilled"],
            overage=v["overage"],
            consumes=v["consumes"],
            refused=v["refused"],
            reservations=v["reservations"],
            settled=v["settled"],
            expired=v["expired"],
        )

    def to_json(self) -> dict[str, Any]:
        """The ``GET /api/keys/{key}`` document (camelCase; times in seconds or ms since the epoch)."""
        return {
            "keyId": fingerprint(self.key_id),
            "remaining": self.remaining,
            "credits": self.capacity,
            "reserved": self.reserved,
            "openReservations": self.open_reservations,
            "refill": (
                {
                    "amount": self.refill.amount,
                    "everySeconds": self.refill.every_seconds,
                    "nextRefillSeconds": _seconds(self.next_refill_ms or 0),
                }
                if self.refill
                else None
            ),
            "expiresAt": self.expires_at_ms,
            "expiresInSeconds": (
                _seconds(max(0, self.expires_at_ms - self.redis_time_ms)) if self.expires_at_ms else None
            ),
            "createdAt": self.created_ms,
            "updatedAt": self.updated_ms,
            "totals": {
                "consumed": self.consumed,
                "refilled": self.refilled,
                "overage": self.overage,
                "consumes": self.consumes,
                "refused": self.refused,
                "reservations": self.reservations,
                "settled": self.settled,
                "expiredReservations": self.expired,
            },
        }


@dataclass(frozen=True, slots=True)
class Consumption:
    """The answer to a consume: allowed (charged) or refused (nothing charged)."""

    allowed: bool
    remaining: int
    """Credits left after this consume (for a replay: as the original answer said)."""
    cost: int
    next_refill_ms: int | None
    """ms until the next refill when refused and the key refills, else None."""
    request_id: str | None = None
    replayed: bool = False
    """True when this is the remembered answer to an earlier call with the same request id."""

    def to_json(self) -> dict[str, Any]:
        """The body of 200 / 429 answers to ``POST /api/keys/{key}/consume``."""
        doc: dict[str, Any] = {"allowed": self.allowed, "remaining": self.remaining, "cost": self.cost}
        if not self.allowed:
            _refused(doc, f"cost {self.cost}", self.remaining, self.next_refill_ms)
        return _with_request(doc, self.request_id, self.replayed)


def _refused(doc: dict[str, Any], what: str, remaining: int, next_refill_ms: int | None) -> None:
    """The fields of a 429 answer (consume or reserve)."""
    doc["error"] = f"not enough credits: {what}, {remaining} remaining"
    doc["status"] = 429
    if next_refill_ms is not None:
        doc["nextRefillSeconds"] = _seconds(next_refill_ms)


def _with_request(doc: dict[str, Any], request_id: str | None, replayed: bool) -> dict[str, Any]:
    """The idempotency fields, when the call carried a request id."""
    if request_id is not None:
        doc["requestId"] = request_id
        doc["replayed"] = replayed
    return doc


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer to a reserve: credits set aside until settled or until the deadline."""

    allowed: bool
    remaining: int
    amount: int
    reservation_id: str | None
    """None when refused."""
    deadline_ms: int | None
    """When the reservation expires by itself, ms since the epoch (Redis time)."""
    next_refill_ms: int | None
    request_id: str | None = None
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        """The body of 200 / 429 answers to ``POST /api/keys/{key}/reservations``."""
        doc: dict[str, Any] = {"allowed": self.allowed, "remaining": self.remaining, "amount": self.amount}
        if self.allowed:
            doc["reservationId"] = self.reservation_id
            doc["deadline"] = self.deadline_ms
        else:
            _refused(doc, f"reserving {self.amount}", self.remaining, self.next_refill_ms)
        return _with_request(doc, self.request_id, self.replayed)


@dataclass(frozen=True, slots=True)
class Settlement:
    """The answer to a settle: what the reservation held, what was charged and what went back."""

    reservation_id: str
    reserved: int
    """Credits the reservation held (0 when it had expired already)."""
    actual: int
    charged: int
    """Credits charged: actual, less what remaining could not pay."""
    refunded: int
    """Credits of the reservation that went back to remaining."""
    uncharged: int
    """Actual usage that could not be paid (remaining would have gone below 0)."""
    remaining: int
    late: bool
    """The reservation had expired (its credits went back at the deadline); actual was charged from
    remaining instead."""
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        """The body of a 200 answer to ``POST /api/keys/{key}/reservations/{id}/settle``."""
        return {
            "reservationId": self.reservation_id,
            "reserved": self.reserved,
            "actual": self.actual,
            "charged": self.charged,
            "refunded": self.refunded,
            "uncharged": self.uncharged,
            "remaining": self.remaining,
            "late": self.late,
            "replayed": self.replayed,
        }
