"""Shadow mode (``spec.mode`` / ``models[].mode``): what enforcing would have refused, counted.

In shadow every job is admitted. Work still queues and waits as it would when enforcing, holds a
slot while it runs and charges its usage to the window budgets, so what shadow counts is what
enforcing would have done with the same traffic; only where enforcing would refuse (a full queue,
a wait that ended without a slot, a spent window budget, the memory budget, the proxy's queue or
``parallel_limit``) the job is admitted anyway, and counted here under the refusal's reason code
(:mod:`limiter.core.refusals`). docs/shadow.md is the user's guide.

Pure: plain counters the instance reads for metrics and pushes to Redis for the operator's status.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from limiter.core.refusals import RefusalReason

#: The reason codes a shadow admission can be counted under: the capacity refusals that shadow
#: turns into admissions (not_ready and credits_exhausted still refuse).
QUEUE_FULL = RefusalReason.QUEUE_FULL.value
PARALLEL_LIMIT = RefusalReason.PARALLEL_LIMIT.value
WINDOW_SPENT = RefusalReason.WINDOW_SPENT.value
MEMORY_LIMIT = RefusalReason.MEMORY_LIMIT.value
SHADOW_REASONS: tuple[str, ...] = (QUEUE_FULL, PARALLEL_LIMIT, WINDOW_SPENT, MEMORY_LIMIT)


@dataclass(slots=True)
class ShadowCounts:
    """Admissions that enforcing would have refused, on one instance."""

    would_refuse: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """(model, job type, reason) -> admissions counted since the instance started."""
    _unsent: Counter[str] = field(default_factory=Counter)

    def count(self, model: str, job_type: str, reason: str) -> None:
        """One admission that enforcing would have refused for ``reason``."""
        self.would_refuse[(model, job_type, reason)] += 1
        self._unsent[reason] += 1

    def by_model(self) -> dict[str, dict[str, int]]:
        """model -> reason -> count (``wouldRefuse`` of ``GET /api/debug/allocation``)."""
        out: dict[str, dict[str, int]] = {}
        for (model, _, reason), n in sorted(self.would_refuse.items()):
            per = out.setdefault(model, {})
            per[reason] = per.get(reason, 0) + n
        return out

    def take_unsent(self) -> dict[str, int]:
        """The counts by reason not yet added to the fleet's totals in Redis (then forgotten)."""
        out, self._unsent = dict(self._unsent), Counter()
        return out

    def put_back(self, counts: dict[str, int]) -> None:
        """Counts that could not be sent: send them with the next ones."""
        self._unsent.update(counts)
