"""The operator's Prometheus metrics: the setting, what the handlers count, the series of a policy,
the endpoint, and (on the cluster) the installed operator's pod serving them."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import kopf
import pytest
from limiter_operator.metrics import ERROR_REASONS, HANDLERS, OUTCOMES, OperatorMetrics, serve
from limiter_operator.settings import OperatorSettings, SettingsError
from prometheus_client import generate_latest

from tests.cluster.conftest import Cluster
from tests.metrics.conftest import DASHBOARD
from tests.metrics.promql import expressions, missing, samples, series_labels, value
from tests.operator.conftest import Release, operator_pods
from tests.operator.support import Policies, get_json, wait_for

# -- the setting --------------------------------------------------------------------------------------------


def test_metrics_address_setting() -> None:
    assert OperatorSettings.from_env({}).metrics_address is None
    s = OperatorSettings.from_env({"FLEET_LIMITER_OPERATOR_METRICS_ADDRESS": "127.10.0.3:8082"})
    assert s.metrics_address == "127.10.0.3:8082"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"FLEET_LIMITER_OPERATOR_METRICS_ADDRESS": "8082"}, "OPERATOR_METRICS_ADDRESS: '8082' is not valid"),
        ({"FLEET_LIMITER_OPERATOR_METRICS_ADDRESS": "host:0"}, "host:port"),
        (
            {
                "FLEET_LIMITER_OPERATOR_METRICS_ADDRESS": "10.0.0.1:8081",
                "FLEET_LIMITER_OPERATOR_HEALTH_ADDRESS": "10.0.0.1:8081",
            },
            "give the metrics another port",
        ),
    ],
)
def test_bad_metrics_addresses_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        OperatorSettings.from_env(env)


# -- what the handlers count ------------------------------------------------------------------------------


def text(metrics: OperatorMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_every_handler_outcome_and_error_reason_starts_at_zero() -> None:
    out = text(OperatorMetrics())
    for handler in HANDLERS:
        for outcome in OUTCOMES:
            assert (
                value(out, "fleet_limiter_operator_reconciles_total", handler=handler, outcome=outcome) == 0
            )
    for reason in ERROR_REASONS:
        assert value(out, "fleet_limiter_operator_errors_total", reason=reason) == 0
    assert value(out, "fleet_limiter_operator_policies") == 0


async def test_handler_calls_are_counted_by_outcome() -> None:
    metrics = OperatorMetrics()
    with metrics.handling("reconcile"):
        pass
    with metrics.handling("reconcile") as run:
        run.outcome = "invalid"
    with pytest.raises(kopf.TemporaryError), metrics.handling("finalize"):
        raise kopf.TemporaryError("waiting for the limiter pods to stop", delay=1)
    with pytest.raises(KeyError), metrics.handling("refresh"):
        raise KeyError("a bug")
    with pytest.raises(asyncio.CancelledError), metrics.handling("refresh"):
        raise asyncio.CancelledError  # the operator stopping: not a call that ended
    metrics.error("Unreachable")
    out = text(metrics)
    counted = {
        (dict(labels)["handler"], dict(labels)["outcome"]): v
        for (name, labels), v in samples(out).items()
        if name == "fleet_limiter_operator_reconciles_total" and v
    }
    assert counted == {
        ("reconcile", "success"): 1,
        ("reconcile", "invalid"): 1,
        ("finalize", "retry"): 1,
        ("refresh", "error"): 1,
    }
    assert value(out, "fleet_limiter_operator_errors_total", reason="Unexpected") == 1
    assert value(out, "fleet_limiter_operator_errors_total", reason="Unreachable") == 1
    assert value(out, "fleet_limiter_operator_handler_duration_seconds_count", handler="reconcile") == 2
    assert value(out, "fleet_limiter_operator_handler_duration_seconds_count", handler="refresh") == 1


STATUS = {
    "observedGeneration": 3,
    "projectedGeneration": 2,
    "replicas": 2,
    "readyReplicas": 1,
    "instanceCount": 1,
    "conditions": [
        {"type": "Ready", "status": "False", "reason": "PodsNotReady"},
        {"type": "Projected", "status": "False", "reason": "Pending"},
        {"type": "Degraded", "status": "False", "reason": "InstancesAgree"},
        {"type": "RedisUnavailable", "status": "False", "reason": "Connected"},
    ],
}


def test_a_policy_has_series_from_its_status_until_it_is_deleted() -> None:
    metrics = OperatorMetrics()
    metrics.observe("team-a", "tpm", STATUS, redis_up=True)
    metrics.observe("team-b", "tpm", {"observedGeneration": 1, "conditions": []}, redis_up=False)
    metrics.projected_into_redis("team-a", "tpm")
    out = text(metrics)
    ref = {"namespace": "team-a", "policy": "tpm"}
    assert value(out, "fleet_limiter_operator_policy_generation", **ref) == 3
    assert value(out, "fleet_limiter_operator_projected_generation", **ref) == 2
    assert value(out, "fleet_limiter_operator_replicas", **ref) == 2
    assert value(out, "fleet_limiter_operator_ready_replicas", **ref) == 1
    assert value(out, "fleet_limiter_operator_instances", **ref) == 1
    assert value(out, "fleet_limiter_operator_redis_up", **ref) == 1
    assert value(out, "fleet_limiter_operator_projections_total", **ref) == 1
    assert (
        value(out, "fleet_limiter_operator_policy_condition", **ref, condition="Ready", status="False") == 1
    )
    assert value(out, "fleet_limiter_operator_policy_condition", **ref, condition="Ready", status="True") == 0
    assert value(out, "fleet_limiter_operator_redis_up", namespace="team-b", policy="tpm") == 0
    assert value(out, "fleet_limiter_operator_projected_generation", namespace="team-b", policy="tpm") == 0
    assert value(out, "fleet_limiter_operator_policies") == 2

    metrics.forget("team-a", "tpm")
    metrics.forget("team-a", "never-seen")  # nothing to remove: no error
    out = text(metrics)
    assert not [labels for (_, labels) in samples(out) if ("namespace", "team-a") in labels]
    assert value(out, "fleet_limiter_operator_redis_up", namespace="team-b", policy="tpm") == 0
    assert value(out, "fleet_limiter_operator_policies") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_endpoint_serves_the_registry() -> None:
    metrics = OperatorMetrics()
    metrics.observe("team-a", "tpm", STATUS, redis_up=True)
    address = f"127.0.0.1:{_free_port()}"
    runner = await serve(address, metrics.registry)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{address}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                body = await resp.text()
            async with session.get(f"http://{address}/other") as resp:
                assert resp.status == 404
    finally:
        await runner.cleanup()
    assert value(body, "fleet_limiter_operator_instances", namespace="team-a", policy="tpm") == 1


# -- the installed operator ------------------------------------------------------------------------------


def scrape(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_the_operator_pod_serves_the_metrics_the_dashboard_queries(
    cluster: Cluster, release: Release, policies: Policies
) -> None:
    spec = {
        "models": [{"name": "model-alpha", "limits": {"tokensPerMinute": 100000}}],
        "jobTypes": [{"name": "A", "ratio": 1.0, "estimate": {"tokens": 10000}}],
        "fleet": {"replicas": 1},
    }
    policies.apply("watched", spec)
    obj = policies.wait_ready("watched")
    (operator,) = operator_pods(cluster, release)
    url = f"http://{operator['status']['podIP']}:8082/metrics"
    ref = {"namespace": policies.namespace, "policy": "watched"}

    def settled() -> str | None:
        out = scrape(url)
        ready = samples(out).get(
            (
                "fleet_limiter_operator_policy_condition",
                frozenset({**ref, "condition": "Ready", "status": "True"}.items()),
            )
        )
        return out if ready == 1 else None

    out = wait_for("the operator's metrics to show the policy Ready", settled, timeout=30)
    generation = obj["metadata"]["generation"]
    assert value(out, "fleet_limiter_operator_policy_generation", **ref) == generation
    assert value(out, "fleet_limiter_operator_projected_generation", **ref) == generation
    assert value(out, "fleet_limiter_operator_instances", **ref) == 1
    assert value(out, "fleet_limiter_operator_ready_replicas", **ref) == 1
    assert value(out, "fleet_limiter_operator_redis_up", **ref) == 1
    assert value(out, "fleet_limiter_operator_projections_total", **ref) >= 1
    assert value(out, "fleet_limiter_operator_reconciles_total", handler="reconcile", outcome="success") >= 1
    assert value(out, "fleet_limiter_operator_reconciles_total", handler="refresh", outcome="success") >= 1

    # Every operator metric the dashboard queries is in the pod's answer; and a limiter pod names
    # the policy it serves.
    dashboard = json.loads(DASHBOARD.read_text())
    assert not missing(expressions(dashboard), series_labels(out), prefix="fleet_limiter_operator_")
    (pod,) = policies.pods("watched")
    limiter = scrape(f"http://{pod['status']['podIP']}:8080/metrics")
    info = {
        "instance_id": pod["metadata"]["name"],
        "policy_namespace": policies.namespace,
        "policy_name": "watched",
    }
    assert value(limiter, "fleet_limiter_instance_info", **info) == 1
    assert get_json(f"http://{pod['status']['podIP']}:8080/ready")["ready"] is True

    # Deleted, the policy's series go. (The operator is the session's: other tests' deletions count too.)
    finalized = {"handler": "finalize", "outcome": "success"}
    before = value(scrape(url), "fleet_limiter_operator_reconciles_total", **finalized)
    policies.kubectl("delete", "rlp", "watched", "--wait=true", "--timeout=60s")
    wait_for(
        "the policy's series to go",
        lambda: not [k for k in samples(scrape(url)) if ("policy", "watched") in k[1]],
        timeout=30,
    )
    assert value(scrape(url), "fleet_limiter_operator_reconciles_total", **finalized) >= before + 1
