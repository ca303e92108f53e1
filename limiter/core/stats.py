"""Hot-path counters of an instance: integers and fixed-bucket histograms, nothing else.

The instance updates these on every acquire and Redis call; the Prometheus collectors
(:mod:`limiter.web.metrics`, :mod:`limiter.proxy.metrics`) read them at scrape time.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from limiter.core.refusals import RefusalReason

if TYPE_CHECKING:
    from limiter.core.admission import Ticket

#: Upper bounds (seconds) of the lease wait histogram: from an immediate grant to the longest queue wait.
WAIT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip
#: Upper bounds (seconds) of the Redis round trip histogram: a local Redis answers in well under 1 ms.
REDIS_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
)  # fmt: skip
#: Why an acquire got no lease (``fleet_limiter_refusals_total{reason}``): the codes of
#: :class:`limiter.core.refusals.RefusalReason` (``credits_exhausted`` is the credit routes' own).
REFUSAL_REASONS: tuple[str, ...] = tuple(
    r.value for r in RefusalReason if r is not RefusalReason.CREDITS_EXHAUSTED
)


@dataclass(slots=True)
class Histogram:
    """Durations in seconds counted into fixed buckets: ``observe`` is one bisect and three additions."""

    bounds: tuple[float, ...]
    count: int = 0
    total: float = 0.0
    buckets: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.buckets = [0] * len(self.bounds)

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.count += 1
        self.total += seconds
        i = bisect.bisect_left(self.bounds, seconds)
        if i < len(self.bounds):
            self.buckets[i] += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` rows, ending with ``+Inf``."""
        rows: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.buckets, strict=True):
            running += n
            rows.append((f"{bound:g}", running))
        rows.append(("+Inf", self.count))
        return rows


@dataclass(slots=True)
class AcquireStats:
    """What a limiter instance's ``acquire`` counts, per job type."""

    admissions: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(job type, model) -> leases handed to callers."""
    refusals: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(job type, reason) -> acquires answered without a lease (reasons: :data:`REFUSAL_REASONS`)."""
    waits: dict[str, Histogram] = field(default_factory=dict)
    """job type -> time from the acquire to its answer, for grants and for waits that ended empty."""

    def wait_histogram(self, job_type: str) -> Histogram:
        """The job type's wait histogram (created on first use)."""
        h = self.waits.get(job_type)
        if h is None:
            h = self.waits[job_type] = Histogram(WAIT_BUCKETS)
        return h

    def admitted(self, ticket: Ticket) -> None:
        """A lease was handed out; it waited from ``enqueued_at`` to ``granted_at``."""
        self.admissions[(ticket.job_type, ticket.model or "")] += 1
        waited = (ticket.granted_at or ticket.enqueued_at) - ticket.enqueued_at
        self.wait_histogram(ticket.job_type).observe(max(0.0, waited))

    def refused(self, job_type: str, reason: str, waited: float | None = None) -> None:
        """An acquire got no lease; ``waited`` (seconds) only for a wait that ended empty."""
        self.refusals[(job_type, reason)] += 1
        if waited is not None:
            self.wait_histogram(job_type).observe(max(0.0, waited))
