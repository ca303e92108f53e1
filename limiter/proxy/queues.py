"""Per-model parallel limits, bounded queues and their statistics, for the LLM proxy.

A proxied request first passes the model's *gate*, which holds the model to its ``parallel_limit``
(the fleet share, or an admin's lower cap), first come first served; only then does it take a
lease of its job type (the job-type manager's slots, borrowing and window budgets), so a request
that waits holds no lease and no reservation.

``queued`` counts requests waiting at the gate; ``active`` those through it (taking their lease,
which is immediate unless the job type's slots or the window budget are taken, then forwarding).
The queue is bounded by ``queue_limit``: a request that would have to wait while ``queued`` is at
the bound is refused at once.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

#: Upper bounds (seconds) of the wait and processing time histograms.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Waiters at the gate re-check this often (seconds): the fleet share can grow without an event here.
GATE_RECHECK_SECONDS = 0.25


@dataclass(slots=True)
class Timing:
    """A histogram of durations in seconds (Prometheus buckets, sum and count)."""

    count: int = 0
    total: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.count += 1
        self.total += seconds
        i = bisect.bisect_left(BUCKETS, seconds)
        if i < len(BUCKETS):
            self.buckets[i] += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` rows, ending with ``+Inf``."""
        rows, running = [], 0
        for bound, n in zip(BUCKETS, self.buckets, strict=True):
            running += n
            rows.append((f"{bound:g}", running))
        rows.append(("+Inf", self.count))
        return rows

    @property
    def mean_ms(self) -> float:
        """Mean duration in milliseconds (0 before the first)."""
        return round(self.total / self.count * 1000, 3) if self.count else 0.0


class ModelQueue:
    """One model's proxy queue on this instance."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.parallel_override: int | None = None
        """An admin's ``parallel_limit`` (a cap under the fleet share), or None."""
        self.queue_override: int | None = None
        """An admin's ``queue_limit``, or None for the default."""
        self.active = 0
        """Requests through the gate: taking their lease, then forwarding."""
        self.queued = 0
        """Requests waiting at the gate (holding no lease)."""
        self.processed = 0
        """Requests forwarded to the upstream, whatever it answered."""
        self.rejected = 0
        """Requests refused by admission: queue full, or no slot within the wait."""
        self.refusals: Counter[str] = Counter()
        """The refused requests by reason (:class:`limiter.core.refusals.RefusalReason`)."""
        self.outcomes: Counter[str] = Counter()
        """Finished requests by outcome (ok, upstream_error, upstream_429, timeout, rejected, ...)."""
        self.tokens: Counter[str] = Counter()
        """Tokens ``estimated`` (reserved) and ``actual`` (read from answers)."""
        self.wait = Timing()
        self.processing = Timing()
        self._gate: deque[object] = deque()
        self._changed = asyncio.Event()

    def can_enter(self, limit: int) -> bool:
        """Whether a request would pass the gate at once."""
        return not self._gate and self.active < limit

    def parallel_limit(self, fleet_share: int) -> int:
        """The limit in force: the fleet share, or the admin's lower cap."""
        if self.parallel_override is None:
            return fleet_share
        return min(self.parallel_override, fleet_share)

    def queue_limit(self, default: int) -> int:
        """The queue bound in force: the admin's value, or ``default``."""
        return default if self.queue_override is None else self.queue_override

    def notify(self) -> None:
        """Wake the gate's waiters (a request left, or a limit changed)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def pass_gate(self, limit: Callable[[], int], wait_seconds: float) -> bool:
        """Become active once fewer than ``limit()`` are, first come first served; False when
        ``wait_seconds`` pass first."""
        if self.can_enter(limit()):
            self.active += 1
            return True
        me = object()
        self._gate.append(me)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        try:
            while True:
                if self._gate[0] is me and self.active < limit():
                    self._gate.popleft()
                    self.active += 1
                    return True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(remaining, GATE_RECHECK_SECONDS))
        finally:
            if me in self._gate:
                self._gate.remove(me)
                self.notify()  # the next one in line may go now

    def leave(self) -> None:
        """A request through the gate ended (or gave up waiting for its lease)."""
        self.active -= 1
        self.notify()

    def stats(self, fleet_share: int, default_queue_limit: int) -> dict[str, int | float]:
        """The model's entry of ``GET /queue/stats``."""
        return {
            "active_requests": self.active,
            "parallel_limit": self.parallel_limit(fleet_share),
            "queued_requests": self.queued,
            "queue_limit": self.queue_limit(default_queue_limit),
            "total_processed": self.processed,
            "total_rejected": self.rejected,
            "avg_wait_time_ms": self.wait.mean_ms,
            "avg_processing_time_ms": self.processing.mean_ms,
        }
