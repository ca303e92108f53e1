"""Prometheus metrics of a limiter instance, read from its state at scrape time.

Custom collectors read the manager, the ledger, the Redis health and a few plain counters when
Prometheus scrapes, so the hot path updates nothing but integers (and, for the lease wait and the
Redis round trip, one :class:`Histogram` bucket). Every metric is prefixed ``fleet_limiter_``;
the names and labels are documented in docs/metrics.md, and the chart's Grafana dashboard queries
them (tests/metrics checks that every name it queries exists).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from limiter.policy import WINDOW_LIMITS

if TYPE_CHECKING:
    from limiter.credits import CreditStore
    from limiter.instance import LimiterInstance
    from limiter.jobtypes import Ticket
    from limiter.proxy import Proxy

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Upper bounds (seconds) of the lease wait histogram: from an immediate grant to the longest queue wait.
WAIT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip
#: Upper bounds (seconds) of the Redis round trip histogram: a local Redis answers in well under 1 ms.
REDIS_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
)  # fmt: skip
#: Why an acquire got no lease (``fleet_limiter_refusals_total{reason}``).
REFUSAL_REASONS: tuple[str, ...] = ("queue_full", "no_wait", "timeout", "budget", "not_ready", "invalid")
#: Credit operations and outcomes counted by :class:`limiter.credits.CreditStore`.
CREDIT_DECISIONS: tuple[tuple[str, str], ...] = tuple(
    (op, outcome) for op in ("consume", "reserve") for outcome in ("allowed", "refused", "replayed")
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
    """What :meth:`limiter.instance.LimiterInstance.acquire` counts, per job type."""

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


def _histogram(family: HistogramMetricFamily, labels: list[str], h: Histogram) -> None:
    family.add_metric(labels, h.cumulative(), h.total)


class InstanceCollector(Collector):
    """Reads one :class:`LimiterInstance` at scrape time."""

    def __init__(self, instance: LimiterInstance) -> None:
        self.instance = instance

    def collect(self) -> Iterator[Metric]:
        yield from self._fleet()
        yield from self._redis()
        if self.instance.manager is not None:
            yield from self._slots()
            yield from self._admissions()
        yield from self._budgets()

    def _fleet(self) -> Iterator[Metric]:
        inst = self.instance
        keys = inst.store.keys
        info = GaugeMetricFamily(
            "fleet_limiter_instance_info",
            "Always 1: the instance's id and the policy it serves (namespace and name).",
            labels=["instance_id", "policy_namespace", "policy_name"],
        )
        info.add_metric([inst.instance_id, keys.namespace, keys.name], 1)
        yield info
        ready = GaugeMetricFamily("fleet_limiter_ready", "1 while the instance takes work (GET /ready).")
        ready.add_metric([], 1.0 if inst.ready()[0] else 0.0)
        yield ready
        count = GaugeMetricFamily("fleet_limiter_instance_count", "Live instances sharing the limits (N).")
        count.add_metric([], inst.instance_count)
        yield count
        changes = CounterMetricFamily("fleet_limiter_allocation_changes", "Allocation changes applied.")
        changes.add_metric([], inst.allocation_changes)
        yield changes
        gen = GaugeMetricFamily("fleet_limiter_policy_generation", "Policy generation in force.")
        gen.add_metric([], inst.generation)
        yield gen

    def _redis(self) -> Iterator[Metric]:
        inst = self.instance
        up = GaugeMetricFamily("fleet_limiter_redis_up", "1 while Redis answers, else 0.")
        up.add_metric([], 1.0 if inst.redis.connected else 0.0)
        yield up
        errors = CounterMetricFamily("fleet_limiter_redis_errors", "Redis calls that failed (unavailable).")
        errors.add_metric([], inst.redis.errors)
        yield errors
        calls = CounterMetricFamily("fleet_limiter_redis_calls", "Redis calls made (scripts and reads).")
        calls.add_metric([], inst.redis_commands)
        yield calls
        latency = GaugeMetricFamily("fleet_limiter_redis_latency_seconds", "Latency of the last Redis call.")
        latency.add_metric([], inst.redis.last_latency_seconds)
        yield latency
        durations = HistogramMetricFamily(
            "fleet_limiter_redis_call_duration_seconds", "Round trip of the Redis calls that succeeded."
        )
        _histogram(durations, [], inst.redis_timing)
        yield durations

    def _slots(self) -> Iterator[Metric]:
        manager = self.instance.manager
        assert manager is not None
        slots = GaugeMetricFamily(
            "fleet_limiter_slots", "Slots per job type and model.", labels=["job_type", "model"]
        )
        busy = GaugeMetricFamily(
            "fleet_limiter_in_flight", "Leases held per job type and model.", labels=["job_type", "model"]
        )
        for (job, model), n in sorted(manager.slots.items()):
            slots.add_metric([job, model], n)
            busy.add_metric([job, model], manager.in_flight[(job, model)])
        yield slots
        yield busy
        snap = manager.snapshot()
        waiting = GaugeMetricFamily(
            "fleet_limiter_waiting", "Jobs waiting per job type (queue depth).", labels=["job_type"]
        )
        ratio = GaugeMetricFamily(
            "fleet_limiter_current_ratio", "Effective share per job type.", labels=["job_type"]
        )
        allocated = GaugeMetricFamily(
            "fleet_limiter_allocated_slots",
            "Slots the job type may use now: its own, less what it lends, plus what it borrows.",
            labels=["job_type"],
        )
        for job, row in snap.items():
            waiting.add_metric([job], float(row["waiting"]))  # type: ignore[arg-type]
            ratio.add_metric([job], float(row["currentRatio"]))  # type: ignore[arg-type]
            allocated.add_metric([job], float(row["allocatedSlots"]))  # type: ignore[arg-type]
        yield waiting
        yield ratio
        yield allocated
        if manager.memory_budget_kb is not None:
            budget = GaugeMetricFamily(
                "fleet_limiter_memory_budget_bytes", "The instance's local memory budget."
            )
            budget.add_metric([], manager.memory_budget_kb * 1024)
            yield budget
        reserved = GaugeMetricFamily(
            "fleet_limiter_memory_reserved_bytes", "Memory the leases in flight reserved (their estimates)."
        )
        reserved.add_metric([], manager.memory_in_use_kb * 1024)
        yield reserved

    def _admissions(self) -> Iterator[Metric]:
        inst = self.instance
        manager = inst.manager
        assert manager is not None
        stats = inst.acquires
        decisions = CounterMetricFamily(
            "fleet_limiter_decisions", "Admission decisions of the job-type manager.", labels=["outcome"]
        )
        for outcome, n in sorted(manager.stats.items()):
            decisions.add_metric([outcome], n)
        yield decisions
        # Known series start at 0, so rate() and increase() see the first event.
        admissions = CounterMetricFamily(
            "fleet_limiter_admissions", "Leases handed to callers.", labels=["job_type", "model"]
        )
        for key in sorted(set(manager.slots) | set(stats.admissions)):
            admissions.add_metric(list(key), stats.admissions[key])
        yield admissions
        refusals = CounterMetricFamily(
            "fleet_limiter_refusals",
            "Acquires answered without a lease, by reason.",
            labels=["job_type", "reason"],
        )
        known = {(job, reason) for job in manager.types for reason in REFUSAL_REASONS}
        for key in sorted(known | set(stats.refusals)):
            refusals.add_metric(list(key), stats.refusals[key])
        yield refusals
        waits = HistogramMetricFamily(
            "fleet_limiter_acquire_wait_seconds",
            "Time from an acquire to its lease, or to the end of a wait without one.",
            labels=["job_type"],
        )
        for job in sorted(set(manager.types) | set(stats.waits)):
            _histogram(waits, [job], stats.wait_histogram(job))
        yield waits

    def _budgets(self) -> Iterator[Metric]:
        inst = self.instance
        if inst.spec is None or inst.grants is None:
            return
        labels = ["model", "limit"]
        limit = GaugeMetricFamily(
            "fleet_limiter_budget_limit", "The fleet's limit per window (the policy's value).", labels=labels
        )
        for spec in inst.spec.models:
            for name, value in spec.limits.as_dict().items():
                if name in WINDOW_LIMITS:
                    limit.add_metric([spec.name, name], value)
        yield limit
        held = GaugeMetricFamily(
            "fleet_limiter_budget_held",
            "Window budget granted to this instance in the current window (drawn from the fleet).",
            labels=labels,
        )
        used = GaugeMetricFamily(
            "fleet_limiter_budget_held_used",
            "Of that, what this instance's jobs reserved or used in the current window.",
            labels=labels,
        )
        remaining = GaugeMetricFamily(
            "fleet_limiter_budget_held_remaining",
            "Window budget this instance holds and has not spent, per model and limit.",
            labels=labels,
        )
        for model, per in inst.grants.ledger.snapshot(inst.clock.now()).items():
            for name, usage in per.items():
                held.add_metric([model, name], usage["capacity"])
                used.add_metric([model, name], usage["used"])
                remaining.add_metric([model, name], usage["remaining"])
        yield held
        yield used
        yield remaining


def registry_for(instance: LimiterInstance) -> CollectorRegistry:
    """A registry with the instance's collector (one per instance, so tests can run several)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InstanceCollector(instance))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format."""
    return generate_latest(registry)


class CreditsCollector(Collector):
    """Credit budget decisions of one instance's :class:`~limiter.credits.CreditStore`."""

    def __init__(self, store: CreditStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        store = self.store
        decisions = CounterMetricFamily(
            "fleet_limiter_credits_decisions",
            "Consumes and reservations on credit keys by outcome (replayed: a retry answered from memory).",
            labels=["operation", "outcome"],
        )
        for key in sorted(set(CREDIT_DECISIONS) | set(store.decisions)):
            decisions.add_metric(list(key), store.decisions[key])
        yield decisions
        charged = CounterMetricFamily(
            "fleet_limiter_credits_charged", "Credits charged by consumes and settled reservations."
        )
        charged.add_metric([], store.charged)
        yield charged
        uncharged = CounterMetricFamily(
            "fleet_limiter_credits_uncharged",
            "Usage settled beyond what a key had left (not charged: a key never goes below 0).",
        )
        uncharged.add_metric([], store.uncharged)
        yield uncharged


class ProxyCollector(Collector):
    """The LLM proxy's per-model queues, read at scrape time (registered by ``limiter.proxy.install``)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Metric]:
        """Per proxied model: gauges of the queue now, counters and histograms since the start."""
        proxy = self.proxy
        labels = ["model"]
        gauges = {
            "active": GaugeMetricFamily(
                "fleet_limiter_proxy_active", "Proxied requests being forwarded now.", labels=labels
            ),
            "queued": GaugeMetricFamily(
                "fleet_limiter_proxy_queued", "Proxied requests waiting (queue depth).", labels=labels
            ),
            "parallel": GaugeMetricFamily(
                "fleet_limiter_proxy_parallel_limit",
                "Parallel limit in force on this instance.",
                labels=labels,
            ),
            "queue_limit": GaugeMetricFamily(
                "fleet_limiter_proxy_queue_limit", "Queue bound in force on this instance.", labels=labels
            ),
        }
        processed = CounterMetricFamily(
            "fleet_limiter_proxy_processed", "Proxied requests forwarded upstream.", labels=labels
        )
        rejected = CounterMetricFamily(
            "fleet_limiter_proxy_rejected", "Proxied requests refused with 503 by admission.", labels=labels
        )
        outcomes = CounterMetricFamily(
            "fleet_limiter_proxy_requests",
            "Finished proxied requests by outcome (ok, upstream_4xx, upstream_429, upstream_error, timeout, "
            "unreachable, client_gone, rejected, cancelled).",
            labels=["model", "outcome"],
        )
        tokens = CounterMetricFamily(
            "fleet_limiter_proxy_tokens",
            "Tokens reserved (kind=estimated) and reported by answers (kind=actual).",
            labels=["model", "kind"],
        )
        wait = HistogramMetricFamily(
            "fleet_limiter_proxy_wait_seconds", "Time from arrival to forwarding.", labels=labels
        )
        processing = HistogramMetricFamily(
            "fleet_limiter_proxy_processing_seconds",
            "Time from forwarding to the answer's end.",
            labels=labels,
        )
        for spec in proxy.proxied_models():
            m = spec.name
            q = proxy.queue(m)
            gauges["active"].add_metric([m], q.active)
            gauges["queued"].add_metric([m], q.queued)
            gauges["parallel"].add_metric([m], proxy.parallel_limit(m))
            gauges["queue_limit"].add_metric([m], proxy.queue_limit(m))
            processed.add_metric([m], q.processed)
            rejected.add_metric([m], q.rejected)
            for outcome, n in sorted(q.outcomes.items()):
                outcomes.add_metric([m, outcome], n)
            for kind in ("estimated", "actual"):
                tokens.add_metric([m, kind], q.tokens[kind])
            wait.add_metric([m], q.wait.cumulative(), q.wait.total)
            processing.add_metric([m], q.processing.cumulative(), q.processing.total)
        yield from gauges.values()
        yield from (processed, rejected, outcomes, tokens, wait, processing)
