"""The LLM proxy's charge on a credit key (``spec.credits.enforce``).

Before a request is forwarded, its estimate is reserved on the caller's key (``Authorization:
Bearer <key>``); a key with too little left gets 429 before anything reaches the upstream. After
the answer, the reservation settles with what the answer used: the rest goes back, overage is
charged. If the proxy dies in between, the reservation's credits return at its deadline, so no
credit is lost and none is spent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from limiter.core.credits import CreditError, InvalidInput, RequestConflict, UnknownKey
from limiter.core.policy import CreditSettings
from limiter.core.refusals import credits_refusal, not_ready
from limiter.redis.creditstore import CreditStore
from limiter.redis.plumbing import StoreUnavailable
from limiter.web.toolkit import bearer_token

log = logging.getLogger("fleet_limiter.keycharge")


class ChargeRefused(Exception):
    """The request may not go ahead on this key: ``status`` (401, 409, 429, 503) and a message."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, **extra: object
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.extra = extra


class KeyCharge:
    """One request's reservation on a credit key, settled exactly once."""

    def __init__(self, credits: CreditStore, key: str, reservation_id: str, amount: int, unit: str) -> None:
        self.credits = credits
        self.key = key
        self.reservation_id = reservation_id
        self.amount = amount
        self.unit = unit
        self._settled = False

    @classmethod
    async def reserve(
        cls, credits: CreditStore, request: web.Request, settings: CreditSettings, tokens: int
    ) -> KeyCharge:
        """Reserve ``tokens`` (or one request) on the request's key; raises :class:`ChargeRefused`."""
        key = bearer_token(request)
        if key is None:
            raise ChargeRefused(
                401,
                "Authorization: a 'Bearer <key>' header with a credit key is required (this policy "
                "enforces credit budgets, spec.credits.enforce)",
                {"WWW-Authenticate": "Bearer"},
            )
        amount = tokens if settings.unit == "tokens" else 1
        try:
            held = await credits.reserve(
                key,
                amount,
                request_id=request.headers.get("X-Request-Id"),
                ttl_seconds=settings.reservation_seconds,
            )
        except (UnknownKey, InvalidInput):
            # Never say whether a key exists: both are "not a usable credit key".
            raise ChargeRefused(
                401, "Authorization: not a valid credit key", {"WWW-Authenticate": "Bearer"}
            ) from None
        except RequestConflict as exc:
            raise ChargeRefused(409, exc.message) from None
        except (CreditError, StoreUnavailable) as exc:
            refusal = not_ready(f"credit budgets unavailable: {exc}", limit="credits")
            raise ChargeRefused(
                503, f"credit budgets unavailable: {exc}", refusal.headers(), **refusal.to_json()
            ) from None
        if not held.allowed or held.reservation_id is None:
            refusal = credits_refusal(
                held.remaining, held.next_refill_ms / 1000 if held.next_refill_ms is not None else None
            )
            # Without a refill nothing frees the key: tell OpenAI SDKs not to retry.
            headers = refusal.headers() or {"x-should-retry": "false"}
            raise ChargeRefused(
                429,
                f"the key's credits do not cover this request: it needs {amount} {settings.unit}, "
                f"{held.remaining} left",
                headers,
                remaining=held.remaining,
                **refusal.to_json(),
            )
        return cls(credits, key, held.reservation_id, amount, settings.unit)

    async def settle(self, used_tokens: int | None, billable: bool) -> None:
        """Charge what the request used, shielded from the handler's cancellation.

        ``billable``: the upstream answered (or may have generated tokens: a timeout, a client that
        went away mid-answer); an error answer or an unreachable upstream costs nothing. Where the
        answer reports no usage, the reservation stands.
        """
        if self._settled:
            return
        self._settled = True
        if not billable:
            actual = 0
        elif self.unit == "requests":
            actual = 1
        else:
            actual = used_tokens if used_tokens is not None else self.amount
        await asyncio.shield(self._settle(actual))

    async def release(self) -> None:
        """The request never ran (admission refused it): the reservation goes back whole."""
        if not self._settled:
            self._settled = True
            await asyncio.shield(self._settle(0))

    async def _settle(self, actual: int) -> None:
        with contextlib.suppress(CreditError, StoreUnavailable):
            await self.credits.settle(self.key, self.reservation_id, actual)
            return
        # Not settled now: the reservation returns its credits at its deadline, nothing is lost.
        log.warning("could not settle a credit reservation; it returns at its deadline")
