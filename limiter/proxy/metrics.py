"""The ``fleet_limiter_proxy_*`` metrics: the proxy's per-model queues, read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from limiter.proxy.service import Proxy


class ProxyCollector(Collector):
    """The LLM proxy's per-model queues, read at scrape time (registered by :mod:`limiter.app`)."""

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
        refusals = CounterMetricFamily(
            "fleet_limiter_proxy_refusals",
            "Proxied requests refused with 503 by admission, by reason (queue_full, parallel_limit, "
            "window_spent, memory_limit).",
            labels=["model", "reason"],
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
            for reason, n in sorted(q.refusals.items()):
                refusals.add_metric([m, reason], n)
            for outcome, n in sorted(q.outcomes.items()):
                outcomes.add_metric([m, outcome], n)
            for kind in ("estimated", "actual"):
                tokens.add_metric([m, kind], q.tokens[kind])
            wait.add_metric([m], q.wait.cumulative(), q.wait.total)
            processing.add_metric([m], q.processing.cumulative(), q.processing.total)
        yield from gauges.values()
        yield from (processed, rejected, refusals, outcomes, tokens, wait, processing)
