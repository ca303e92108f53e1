"""Prometheus metrics of a limiter instance, read from its state at scrape time.

A custom collector reads the manager, the ledger and the Redis health when Prometheus scrapes, so
the hot path updates nothing but plain counters. Every metric is prefixed ``fleet_limiter_``; the
names and labels are documented in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from limiter.instance import LimiterInstance
    from limiter.proxy import Proxy

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class InstanceCollector(Collector):
    """Reads one :class:`LimiterInstance` at scrape time."""

    def __init__(self, instance: LimiterInstance) -> None:
        self.instance = instance

    def collect(self) -> Iterator[Metric]:
        inst = self.instance
        up = GaugeMetricFamily("fleet_limiter_redis_up", "1 while Redis answers, else 0.")
        up.add_metric([], 1.0 if inst.redis.connected else 0.0)
        yield up
        errors = CounterMetricFamily("fleet_limiter_redis_errors", "Redis calls that failed (unavailable).")
        errors.add_metric([], inst.redis.errors)
        yield errors
        latency = GaugeMetricFamily("fleet_limiter_redis_latency_seconds", "Latency of the last Redis call.")
        latency.add_metric([], inst.redis.last_latency_seconds)
        yield latency
        count = GaugeMetricFamily("fleet_limiter_instance_count", "Live instances sharing the limits (N).")
        count.add_metric([], inst.instance_count)
        yield count
        changes = CounterMetricFamily("fleet_limiter_allocation_changes", "Allocation changes applied.")
        changes.add_metric([], inst.allocation_changes)
        yield changes
        gen = GaugeMetricFamily("fleet_limiter_policy_generation", "Policy generation in force.")
        gen.add_metric([], inst.generation)
        yield gen
        manager = inst.manager
        if manager is None:
            return
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
            "fleet_limiter_waiting", "Jobs waiting per job type.", labels=["job_type"]
        )
        ratio = GaugeMetricFamily(
            "fleet_limiter_current_ratio", "Effective share per job type.", labels=["job_type"]
        )
        for job, row in snap.items():
            waiting.add_metric([job], float(row["waiting"]))  # type: ignore[arg-type]
            ratio.add_metric([job], float(row["currentRatio"]))  # type: ignore[arg-type]
        yield waiting
        yield ratio
        decisions = CounterMetricFamily(
            "fleet_limiter_decisions", "Admission decisions by outcome.", labels=["outcome"]
        )
        for outcome, n in sorted(manager.stats.items()):
            decisions.add_metric([outcome], n)
        yield decisions
        if inst.grants is not None:
            remaining = GaugeMetricFamily(
                "fleet_limiter_budget_held_remaining",
                "Window budget this instance holds and has not spent, per model and limit.",
                labels=["model", "limit"],
            )
            for model, per in inst.grants.ledger.snapshot(inst.clock.now()).items():
                for limit, usage in per.items():
                    remaining.add_metric([model, limit], usage["remaining"])
            yield remaining


def registry_for(instance: LimiterInstance) -> CollectorRegistry:
    """A registry with the instance's collector (one per instance, so tests can run several)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InstanceCollector(instance))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format."""
    return generate_latest(registry)


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
