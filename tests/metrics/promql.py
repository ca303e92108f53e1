"""Just enough PromQL reading for the dashboard tests: the metric and label names an expression uses.

Not a parser: the dashboard's expressions are selectors, aggregations with ``by (...)``, functions,
range vectors and arithmetic, which this splits reliably. Names are compared with what scrapes
expose as Prometheus stores it (sample names: counters with ``_total``, histograms with
``_bucket``, ``_sum`` and ``_count``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

#: Labels a scrape adds to every series (the chart's ServiceMonitors add ``policy`` to the limiters').
TARGET_LABELS = frozenset(
    {"namespace", "policy", "pod", "instance", "job", "service", "container", "endpoint"}
)
FUNCTIONS = frozenset(
    {
        "sum", "avg", "min", "max", "count", "rate", "irate", "increase", "histogram_quantile",
        "label_values", "clamp_min", "clamp_max", "abs", "delta", "deriv", "topk", "bottomk", "time",
        "vector", "scalar", "sort", "sort_desc", "absent", "changes", "resets", "avg_over_time",
        "max_over_time", "min_over_time", "sum_over_time", "quantile", "stddev", "group",
    }
)  # fmt: skip
KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                      "unless", "offset", "inf", "nan"})  # fmt: skip
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"(?:[^\"\\]|\\.)*\"")
_LABEL_VALUES = re.compile(r"label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)")
_IDENT = re.compile(r"(?<![\w$.:])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?")


@dataclass(frozen=True)
class Usage:
    """What one expression uses."""

    metrics: frozenset[str]
    labels: frozenset[str]
    functions: frozenset[str]


def usage(expr: str) -> Usage:
    """The metric names, label names and functions of a PromQL expression."""
    labels: set[str] = set()
    # Grafana's label_values(selector, label): the second argument names a label.
    for _, label in _LABEL_VALUES.findall(expr):
        labels.add(label)
    expr = _LABEL_VALUES.sub(r"label_values(\1)", expr)
    for group in _GROUPING.findall(expr):
        labels |= {name.strip() for name in group.split(",") if name.strip()}
    rest = _GROUPING.sub(" ", expr)
    for selector in _SELECTOR.findall(rest):
        labels |= set(_MATCHER.findall(selector))
    rest = _SELECTOR.sub(" ", rest)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)  # range vectors: [$__rate_interval], [5m]
    rest = re.sub(r"\"(?:[^\"\\]|\\.)*\"", " ", rest)  # string arguments
    metrics: set[str] = set()
    functions: set[str] = set()
    for name, call in _IDENT.findall(rest):
        if call:
            functions.add(name)
        elif name.lower() not in KEYWORDS:
            metrics.add(name)
    return Usage(frozenset(metrics), frozenset(labels), frozenset(functions))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and templating queries."""
    out = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]
            out.append(query["query"] if isinstance(query, dict) else query)
    return out


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A scrape as (sample name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value in a scrape (KeyError when it is not there)."""
    return samples(text)[(name, frozenset(labels.items()))]


def series_labels(*scrapes: str) -> dict[str, set[str]]:
    """Sample name (as Prometheus stores it) -> the label names its samples carry, over the scrapes."""
    out: dict[str, set[str]] = {}
    for text in scrapes:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, set()).update(sample.labels)
    return out


def missing(exprs: Iterable[str], exposed: dict[str, set[str]], prefix: str = "") -> list[str]:
    """Problems: metrics an expression queries that no scrape exposes (only names starting with
    ``prefix``), and labels no queried metric carries (beyond the target labels)."""
    problems = []
    for expr in exprs:
        used = usage(expr)
        for name in sorted(used.metrics):
            if name.startswith(prefix) and name not in exposed:
                problems.append(f"{name} (in {expr!r}) is not exposed")
        known = set(TARGET_LABELS)
        for name in used.metrics:
            known |= exposed.get(name, set())
        for label in sorted(used.labels - known):
            if used.metrics <= exposed.keys():
                problems.append(f"label {label!r} (in {expr!r}) is on none of {sorted(used.metrics)}")
    return problems
