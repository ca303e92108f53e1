"""Fleet-wide window budgets (SPEC section 3): the values the budget scripts take and return.

Pure: no I/O. :class:`limiter.redis.fleetstore.RedisStore` runs the scripts; this module builds their ARGV and
reads their replies. One budget is a Redis hash ``{window, used}`` per (model, window limit);
windows are aligned to the epoch by Redis TIME (``window id = floor(now_s / window_s)``), so the
60 s windows are UTC minutes and the 86400 s windows UTC days.

Instances draw grants in bulk (``want``) and spend them locally, so the hot path needs no Redis
round trip per job; ``need`` is the least a draw is worth (one job's estimate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from limiter.core.policy import WINDOW_LIMITS

#: Window length in seconds of each window limit (tests may pass shorter ones to the store).
DEFAULT_WINDOW_SECONDS: dict[str, int] = {limit: seconds for limit, (_, seconds) in WINDOW_LIMITS.items()}


@dataclass(frozen=True, slots=True)
class BudgetAsk:
    """One dimension of a draw: take at least ``need`` and up to ``want`` of ``limit``."""

    dimension: str
    """A window limit: tokensPerMinute, requestsPerMinute, tokensPerDay or requestsPerDay."""
    limit: int
    """The fleet's limit in one window (the policy's value)."""
    need: int
    """Least amount worth drawing; the draw fails for every dimension if any cannot give this much."""
    want: int
    """Most to take (at least ``need``); a grant is ``min(want, what is left)``."""

    def __post_init__(self) -> None:
        check_dimension(self.dimension)
        if self.limit < 1:
            raise ValueError(f"{self.dimension}: limit {self.limit} is not valid: it must be at least 1")
        if not 0 <= self.need <= self.want:
            raise ValueError(
                f"{self.dimension}: need {self.need} and want {self.want} are not valid: 0 <= need <= want"
            )
        if self.need > self.limit:
            raise ValueError(
                f"{self.dimension}: need {self.need} exceeds the limit {self.limit}: no window can ever "
                "grant it; lower the estimate below the limit"
            )


@dataclass(frozen=True, slots=True)
class DimensionGrant:
    """What one dimension of a draw gave."""

    dimension: str
    window_id: int
    """floor(Redis time in s / window length): give back into this window only."""
    granted: int
    """Amount taken (0 when the draw was refused)."""
    remaining: int
    """What the fleet has left in this window after the draw (negative after an overage charge)."""
    window_ends_in_ms: int
    """Ms of Redis time until this window ends."""


@dataclass(frozen=True, slots=True)
class BudgetGrant:
    """The result of a draw: all dimensions granted, or none."""

    ok: bool
    dimensions: tuple[DimensionGrant, ...]
    redis_time_ms: int
    """Redis's clock during the draw, ms since the epoch."""
    retry_after_ms: int
    """0 when granted; otherwise ms until every window that refused has ended (or the fence ends).
    Retrying sooner only helps if some instance gives budget back (a refusal is cheap, so callers
    may)."""
    fenced: bool = False
    """Refused because Redis lost its data and the fleet's counters are being rebuilt (the budget
    fence, :attr:`limiter.redis.keys.PolicyKeys.budget_fence`): nothing is drawn until it ends."""

    def granted(self, dimension: str) -> int:
        """Amount granted on ``dimension`` (0 if it was not asked for or the draw was refused)."""
        return next((d.granted for d in self.dimensions if d.dimension == dimension), 0)


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """One budget's current window, as read by :meth:`RedisStore.usage`."""

    dimension: str
    window_id: int
    used: int
    """Granted plus charged minus given back, in the current window."""
    window_ends_in_ms: int


def check_dimension(dimension: str) -> None:
    """Raise a clear ValueError unless ``dimension`` is a window limit."""
    if dimension not in WINDOW_LIMITS:
        raise ValueError(
            f"dimension: {dimension!r} is not a window limit; expected one of {', '.join(WINDOW_LIMITS)}"
        )


def check_unique(dimensions: Sequence[str]) -> None:
    """A script must not see one budget key twice (the second read would miss the first write)."""
    seen: set[str] = set()
    for d in dimensions:
        if d in seen:
            raise ValueError(f"dimension: {d!r} appears twice in one call; merge the amounts")
        seen.add(d)


def draw_argv(
    asks: Sequence[BudgetAsk], window_seconds: Mapping[str, int], since: int = 0, fence_ms: int = 0
) -> list[int]:
    """ARGV of the draw script: window length, limit, need, want per dimension, then ``since`` (of
    the caller's last allocation record, 0: none) and the fence's length in ms."""
    per = [v for a in asks for v in (window_seconds[a.dimension], a.limit, a.need, a.want)]
    return [*per, since, fence_ms]


def parse_draw(asks: Sequence[BudgetAsk], reply: Sequence[int]) -> BudgetGrant:
    """Read the draw script's reply: 1 granted / 0 refused / 2 fenced, Redis time, then four numbers
    per dimension."""
    dims = tuple(
        DimensionGrant(a.dimension, *(int(v) for v in reply[2 + 4 * i : 6 + 4 * i]))
        for i, a in enumerate(asks)
    )
    ok = int(reply[0]) == 1
    blocking = [d.window_ends_in_ms for d, a in zip(dims, asks, strict=True) if d.remaining < a.need]
    return BudgetGrant(
        ok=ok,
        dimensions=dims,
        redis_time_ms=int(reply[1]),
        retry_after_ms=0 if ok else max(blocking, default=0),
        fenced=int(reply[0]) == 2,
    )
