"""Rate-limit headers of lease grants and proxied answers: pure, with the time handed in.

Two families, for a model's *minute* limits (``requestsPerMinute``, ``tokensPerMinute``; a model
without one gets no header for that dimension):

* OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, the reset as a duration
  like ``6m0s``, ``1s`` or ``20ms`` (what OpenAI's API sends and its SDKs show);
* the IETF httpapi draft's ``RateLimit-Policy`` and ``RateLimit`` structured fields
  (draft-ietf-httpapi-ratelimit-headers-10): ``"rpm";q=500;w=60, "tpm";q=100000;w=60;qu="tokens"``
  and ``"rpm";r=499;t=13, "tpm";r=4200;t=13``.

"Remaining" is this instance's view of what the fleet has left in the current window: what the
fleet's counter in Redis had left at this instance's last draw in this window, plus the grant this
instance holds unspent (:func:`minute_windows`). Other instances' draws since then are not seen, so
it can be higher than the truth, never a promise; refusals still come from the counters themselves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from limiter.core.budgets import BudgetLedger, window_end, window_id

#: The minute limits reported, with their header suffix and their RateLimit policy name.
MINUTE_LIMITS: dict[str, tuple[str, str]] = {
    "requestsPerMinute": ("requests", "rpm"),
    "tokensPerMinute": ("tokens", "tpm"),
}


@dataclass(frozen=True, slots=True)
class WindowView:
    """One minute limit of a model as an instance sees it now."""

    limit_name: str
    limit: int
    remaining: int
    reset_seconds: float
    """Seconds until the current window ends (UTC-aligned minute)."""


def openai_duration(seconds: float) -> str:
    """A duration as OpenAI writes ``x-ratelimit-reset-*``: ``20ms`` below a second, else hours,
    minutes and seconds with up to three decimals (``1s``, ``6.5s``, ``6m0s``, ``1h0m0s``)."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def minute_windows(
    ledger: BudgetLedger, model: str, seen: Mapping[tuple[str, str], tuple[int, int]], now: float
) -> list[WindowView]:
    """The model's minute limits as this instance sees them: ``seen`` is (model, limit) -> (window
    id, what the fleet had left) from the last draw; without one in the current window the fleet
    is taken to have the limit less what this instance used."""
    out = []
    for name in MINUTE_LIMITS:
        counter = ledger.counters.get(model, {}).get(name)
        if counter is None:
            continue
        counter.roll(now, ledger.mode)
        current = window_id(now, counter.seconds)
        held = max(0, counter.headroom) if counter.window == current else 0
        fleet = seen.get((model, name))
        if fleet is not None and fleet[0] == current:
            remaining = max(0, fleet[1]) + held
        else:
            remaining = counter.limit - (counter.used if counter.window == current else 0)
        out.append(
            WindowView(
                name,
                counter.limit,
                min(counter.limit, max(0, remaining)),
                window_end(now, counter.seconds) - now,
            )
        )
    return out


def rate_limit_headers(views: list[WindowView]) -> dict[str, str]:
    """The OpenAI and IETF-draft headers of ``views`` (empty without any minute limit)."""
    headers: dict[str, str] = {}
    policies, states = [], []
    for v in views:
        suffix, policy = MINUTE_LIMITS[v.limit_name]
        headers[f"x-ratelimit-limit-{suffix}"] = str(v.limit)
        headers[f"x-ratelimit-remaining-{suffix}"] = str(v.remaining)
        headers[f"x-ratelimit-reset-{suffix}"] = openai_duration(v.reset_seconds)
        unit = ';qu="tokens"' if suffix == "tokens" else ""
        policies.append(f'"{policy}";q={v.limit};w=60{unit}')
        states.append(f'"{policy}";r={v.remaining};t={max(0, math.ceil(v.reset_seconds))}')
    if views:
        headers["RateLimit-Policy"] = ", ".join(policies)
        headers["RateLimit"] = ", ".join(states)
    return headers
