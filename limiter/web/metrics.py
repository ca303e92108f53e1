"""Prometheus metrics of a limiter instance, read from its state at scrape time.

Custom collectors read the manager, the ledger, the Redis health and a few plain counters when
Prometheus scrapes, so the hot path updates nothing but integers (and, for the lease wait and the
Redis round trip, one :class:`Histogram` bucket). Every metric is prefixed ``fleet_limiter_``;
the names and labels are documented in docs/metrics.md, and the chart's Grafana dashboard queries
them (tests/metrics checks that every name it queries exists).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from limiter.core.policy import WINDOW_LIMITS
from limiter.core.shadow import SHADOW_REASONS
from limiter.core.stats import REFUSAL_REASONS, Histogram
from limiter.fleet.instance import LimiterInstance
from limiter.redis.creditstore import CreditStore

#: Credit operations and outcomes counted by :class:`limiter.redis.creditstore.CreditStore`.
CREDIT_DECISIONS: tuple[tuple[str, str], ...] = tuple(
    (op, outcome) for op in ("consume", "reserve") for outcome in ("allowed", "refused", "replayed")
)


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
        yield from self._shadow()
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

    def _shadow(self) -> Iterator[Metric]:
        inst = self.instance
        spec = inst.spec
        if spec is None:
            return
        mode = GaugeMetricFamily(
            "fleet_limiter_shadow_mode",
            "1 while the model is in shadow mode (everything admitted), 0 while it is enforced.",
            labels=["model"],
        )
        for m in spec.models:
            mode.add_metric([m.name], 1.0 if spec.mode_of(m.name) == "shadow" else 0.0)
        yield mode
        counts = inst.shadow.would_refuse
        refusals = CounterMetricFamily(
            "fleet_limiter_shadow_refusals",
            "Admissions in shadow mode that enforcing would have refused, by refusal reason.",
            labels=["model", "job_type", "reason"],
        )
        # The series of models in shadow start at 0, so rate() and increase() see the first one.
        known = {
            (model, job.name, reason)
            for job in spec.job_types
            for model in spec.models_of(job)
            if spec.mode_of(model) == "shadow"
            for reason in SHADOW_REASONS
        }
        for key in sorted(known | set(counts)):
            refusals.add_metric(list(key), counts[key])
        yield refusals

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


class CreditsCollector(Collector):
    """Credit budget decisions of one instance's :class:`~limiter.redis.creditstore.CreditStore`."""

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
