"""Why a request was refused: one vocabulary for the lease API, the proxy, credits and metrics.

Every refusal names the limit that refused it and when that limit should free. A route turns a
:class:`Refusal` into its JSON body (``reason``, ``limit``, ``retryAfterSeconds`` and, for work
that queued or would have queued, ``position`` and ``estimatedStartSeconds``) and its
``Retry-After`` header; the same ``reason`` code labels the refusal counter
(``fleet_limiter_refusals_total{reason}``), so a code seen in a body can be found in a dashboard
(and shadow mode can count would-be refusals by it). Codes name the *limit*, not how the wait ended:
a caller that asked not to wait and one whose wait ran out are refused by the same full slots
(``parallel_limit``), and what they can do about it is the same.

Pure: no I/O, no clock (seconds are handed in).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class RefusalReason(StrEnum):
    """Why a request got no lease, no proxied answer, or no credits (the JSON ``reason``)."""

    QUEUE_FULL = "queue_full"
    """The queue it would wait in is full: a job type's ``queue.maxWaiting`` (lease API) or a
    model's ``queue_limit`` (proxy). Frees when the queue ahead drains."""
    PARALLEL_LIMIT = "parallel_limit"
    """Every slot it may use is busy (the job type's slots on its models, borrowing included, or
    the proxy's ``parallel_limit``), at once or until its wait ended. Frees when the earliest
    lease ends."""
    WINDOW_SPENT = "window_spent"
    """A slot was free but a window budget of the model is spent (tokens or requests per minute or
    per day, fleet-wide). Frees when that window ends (UTC-aligned)."""
    MEMORY_LIMIT = "memory_limit"
    """The instance's local memory budget (``memoryBudgetMB``) is held by running leases. Frees
    when the earliest of them ends."""
    NOT_READY = "not_ready"
    """The instance cannot admit now: it has not joined the fleet, lost contact with it, cannot
    reach Redis (credits too), or is shutting down. Retry soon, or on another instance."""
    CREDITS_EXHAUSTED = "credits_exhausted"
    """The API key's credits do not cover the cost. Frees at the key's next refill, if any."""
    INVALID = "invalid"
    """Not a capacity refusal: a bad request (400/404, no ``Retry-After``). Counted beside the
    refusals so every acquire that got no lease is in one counter."""


#: The reasons a capacity refusal (503 / 429 with ``Retry-After``) can carry, in documentation order.
CAPACITY_REASONS: tuple[RefusalReason, ...] = tuple(
    r for r in RefusalReason if r is not RefusalReason.INVALID
)

#: One human sentence per reason; ``{scope}`` is what the limit belongs to (see :meth:`Limit.scope`).
MESSAGES: dict[RefusalReason, str] = {
    RefusalReason.QUEUE_FULL: "the queue of {scope} is full ({value} waiting)",
    RefusalReason.PARALLEL_LIMIT: "every slot of {scope} is busy ({name} {value})",
    RefusalReason.WINDOW_SPENT: "the {name} budget of {scope} is spent for this {window} (limit {value})",
    RefusalReason.MEMORY_LIMIT: "the memory budget of {scope} is in use ({name} {value})",
    RefusalReason.NOT_READY: "this instance cannot admit now",
    RefusalReason.CREDITS_EXHAUSTED: "the API key's credits do not cover the cost ({value} left)",
    RefusalReason.INVALID: "the request is not valid",
}

#: Retry-After never says less than this (whole seconds, as the header carries).
MIN_RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True, slots=True)
class Limit:
    """The limit that refused (the JSON ``limit``): its name as the policy or the API spells it
    (``tokensPerMinute``, ``requestsPerDay``, ``slots``, ``maxWaiting``, ``parallel_limit``,
    ``queue_limit``, ``memoryBudgetMB``, ``credits``, ``instance``) and what it belongs to."""

    name: str
    model: str | None = None
    job_type: str | None = None
    dimension: str | None = None
    """Window limits: ``tokens`` or ``requests``."""
    window: str | None = None
    """Window limits: ``minute`` or ``day``."""
    value: int | None = None
    """The limit's value in force on this instance (a window limit: the fleet-wide limit)."""

    def scope(self) -> str:
        """What the limit belongs to, for messages: "model 'm'", "job type 'j' on model 'm'", ..."""
        parts = []
        if self.job_type is not None:
            parts.append(f"job type '{self.job_type}'")
        if self.model is not None:
            parts.append(f"model '{self.model}'")
        return " on ".join(parts) or "this instance"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name}
        for key, value in (
            ("model", self.model),
            ("jobType", self.job_type),
            ("dimension", self.dimension),
            ("window", self.window),
            ("value", self.value),
        ):
            if value is not None:
                doc[key] = value
        return doc


def retry_after_seconds(seconds: float) -> int:
    """Whole seconds for ``Retry-After`` (rounded up, at least :data:`MIN_RETRY_AFTER_SECONDS`;
    not a finite number gives the minimum)."""
    if not math.isfinite(seconds):
        return MIN_RETRY_AFTER_SECONDS
    return max(MIN_RETRY_AFTER_SECONDS, math.ceil(seconds - 1e-9))


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refusal: why, which limit, and when to try again."""

    reason: RefusalReason
    limit: Limit | None
    retry_after: float
    """Seconds until the limit should free (the window's end, the earliest lease's expected end,
    the queue's drain time); ``math.inf`` when nothing frees it by itself (credits without a
    refill): then no ``Retry-After`` is sent and ``retryAfterSeconds`` is null."""
    position: int | None = None
    """Queued work: the 1-based place it had (or would have had) in its queue."""
    estimated_start: float | None = None
    """Queued work: seconds from now until it would have started."""
    detail: str | None = None
    """More words for the message (e.g. why the instance is not ready)."""

    @property
    def frees(self) -> bool:
        """Whether the limit frees by itself (a finite ``retry_after``)."""
        return math.isfinite(self.retry_after)

    @property
    def retry_after_header(self) -> int | None:
        """``Retry-After`` in whole seconds, or None when nothing frees the limit by itself."""
        return retry_after_seconds(self.retry_after) if self.frees else None

    def message(self) -> str:
        """The human sentence of this refusal (the reason's template, filled in, plus the detail)."""
        limit = self.limit or Limit(name="instance")
        text = MESSAGES[self.reason].format(
            scope=limit.scope(),
            name=limit.name,
            value="?" if limit.value is None else limit.value,
            window=limit.window or "window",
        )
        if self.detail:
            text += f": {self.detail}"
        if not self.frees:
            return f"{text}; it does not free by itself"
        return f"{text}; retry after {self.retry_after_header} s"

    def to_json(self) -> dict[str, Any]:
        """The refusal's fields of a JSON error body (added beside ``error`` and ``status``)."""
        doc: dict[str, Any] = {"reason": self.reason.value, "retryAfterSeconds": self.retry_after_header}
        if self.limit is not None:
            doc["limit"] = self.limit.to_json()
        if self.position is not None:
            doc["position"] = self.position
        if self.estimated_start is not None:
            doc["estimatedStartSeconds"] = round(max(0.0, self.estimated_start), 3)
        return doc

    def headers(self) -> dict[str, str]:
        """``Retry-After`` (whole seconds, the same number as ``retryAfterSeconds``) and
        ``retry-after-ms`` (which the OpenAI SDKs read first); none when the limit does not free by
        itself."""
        if self.retry_after_header is None:
            return {}
        ms = max(MIN_RETRY_AFTER_SECONDS * 1000, math.ceil(self.retry_after * 1000))
        return {"Retry-After": str(self.retry_after_header), "retry-after-ms": str(ms)}


def credits_refusal(remaining: int, next_refill_seconds: float | None) -> Refusal:
    """A key's credits do not cover a cost: retry at its next refill (never, without a refill)."""
    return Refusal(
        RefusalReason.CREDITS_EXHAUSTED,
        Limit("credits", value=remaining),
        retry_after=math.inf if next_refill_seconds is None else next_refill_seconds,
    )


def not_ready(detail: str, limit: str = "instance", retry_after: float = 1.0) -> Refusal:
    """This instance cannot decide now (``detail`` says why); retry in a second or elsewhere."""
    return Refusal(RefusalReason.NOT_READY, Limit(limit), retry_after=retry_after, detail=detail)
