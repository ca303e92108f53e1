"""The Grafana dashboard shipped in the chart: valid JSON that Grafana can provision, and every
metric and label it queries exists in what a real limiter instance and the operator serve."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from limiter_operator.builders import parse_policy
from limiter_operator.metrics import OperatorMetrics, serve
from limiter_operator.status import FleetState, Observation, RedisState, build_status

from limiter.core.membership import AllocationRecord, PoolRecord
from tests.metrics.conftest import DASHBOARD
from tests.metrics.promql import expressions, missing, panels, series_labels, usage
from tests.support.redis_server import free_port

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def test_dashboard_is_a_provisionable_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "fleet-limiter" and dashboard["title"]
    assert "id" not in dashboard, "a provisioned dashboard must not carry a database id"
    assert isinstance(dashboard["schemaVersion"], int)
    all_panels = list(panels(dashboard))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    assert {"namespace", "policy"} <= variables.keys()
    for panel in all_panels:
        if panel["type"] == "row":
            continue
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} queries nothing"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert target["expr"].count("{") == target["expr"].count("}"), target["expr"]


#: The operator's metrics about itself rather than a policy: no namespace / policy to filter by.
OPERATOR_WIDE = {
    "fleet_limiter_operator_reconciles_total",
    "fleet_limiter_operator_errors_total",
    "fleet_limiter_operator_handler_duration_seconds_bucket",
    "fleet_limiter_operator_policies",
}


def test_every_query_names_only_fleet_limiter_metrics_and_follows_the_variables(
    dashboard: dict[str, Any],
) -> None:
    for expr in expressions(dashboard):
        used = usage(expr)
        assert used.metrics, f"{expr!r} queries no metric"
        assert all(m.startswith("fleet_limiter_") for m in used.metrics), expr
        if "label_values" in expr or used.metrics <= OPERATOR_WIDE:
            continue
        assert 'namespace=~"$namespace"' in expr and 'policy=~"$policy"' in expr, expr
        # Every selector of the expression filters, not only the first.
        assert expr.count('policy=~"$policy"') == expr.count("fleet_limiter_"), expr


async def operator_scrape() -> str:
    """The operator's /metrics, served by its own server after one reconcile of a policy."""
    metrics = OperatorMetrics()
    body = {
        "apiVersion": "fleetlimiter.io/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": "tpm", "namespace": "team-a", "uid": "uid-1", "generation": 2},
        "spec": {
            "models": [{"name": "model-alpha", "limits": {"tokensPerMinute": 100000}}],
            "jobTypes": [{"name": "A", "ratio": 1.0, "estimate": {"tokens": 10000}}],
        },
    }
    policy = parse_policy(body)
    record = AllocationRecord(2, 5, 2, 1, "join", {"model-alpha": PoolRecord(5, {"tokensPerMinute": 50000})})
    observation = Observation(policy, FleetState(2, 2), RedisState("127.0.0.1:6379", 2, record))
    with metrics.handling("reconcile"):
        metrics.projected_into_redis("team-a", "tpm")
        metrics.observe("team-a", "tpm", build_status(observation, None, "2026-01-01T00:00:00Z"), True)
    address = f"127.0.0.1:{free_port()}"
    runner = await serve(address, metrics.registry)
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://{address}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()
    finally:
        await runner.cleanup()


async def test_every_metric_and_label_the_dashboard_queries_is_served(
    dashboard: dict[str, Any], limiter_scrape: str
) -> None:
    exposed = series_labels(limiter_scrape, await operator_scrape())
    problems = missing(expressions(dashboard), exposed, prefix="fleet_limiter_")
    assert not problems, "\n".join(problems)
    # The check has teeth: a name the scrapes lack, or a label its metric lacks, is reported.
    assert missing(['sum(rate(fleet_limiter_admissions{namespace=~"x"}[1m]))'], exposed)
    assert missing(["sum by (jobtype) (fleet_limiter_waiting)"], exposed)
    assert missing(["sum by (job_type) (fleet_limiter_waiting)"], exposed) == []
