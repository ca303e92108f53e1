"""The objects the operator owns for a policy, built without a cluster."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from limiter_operator.builders import (
    MANAGER,
    NoRedis,
    PolicyRef,
    RedisSource,
    build_children,
    build_deployment,
    build_pdb,
    build_service,
    build_service_account,
    child_name,
    labels,
    parse_policy,
    policy_label,
    projected_spec,
    redis_env,
    redis_source,
    selector_labels,
)
from limiter_operator.settings import OperatorSettings

from limiter.core.policy import RedisSettings, SecretKeyRef

SPEC: dict[str, Any] = {
    "models": [{"name": "model-alpha", "limits": {"tokensPerMinute": 100000}}],
    "jobTypes": [
        {"name": "A", "ratio": 0.6, "estimate": {"tokens": 10000}},
        {"name": "B", "ratio": 0.4, "estimate": {"tokens": 5000}},
    ],
    "fleet": {"replicas": 2},
}
SETTINGS = OperatorSettings(default_redis_url="redis://redis.infra:6379/0", peering_priority=1)


def body(spec: dict[str, Any] | None = None, name: str = "chat", generation: int = 3) -> dict[str, Any]:
    return {
        "apiVersion": "fleetlimiter.io/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": name, "namespace": "team-a", "uid": "uid-1", "generation": generation},
        "spec": copy.deepcopy(SPEC if spec is None else spec),
    }


def deployment(spec: dict[str, Any] | None = None, settings: OperatorSettings = SETTINGS) -> dict[str, Any]:
    parsed = parse_policy(body(spec))
    assert parsed.spec is not None, parsed.problems
    return build_deployment(parsed.ref, parsed.spec, redis_source(parsed.redis, settings), settings)


def container(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def env(dep: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(dep)["env"]}


# -- validation --------------------------------------------------------------------------------------


def test_a_valid_policy_parses_with_its_reference() -> None:
    parsed = parse_policy(body())
    assert parsed.valid and parsed.problems == ()
    assert parsed.ref == PolicyRef("team-a", "chat", "uid-1", 3)
    assert parsed.model_names == ("model-alpha",)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda s: s["jobTypes"][0].update(ratio=0.7), "spec.jobTypes[*].ratio"),
        (lambda s: s["jobTypes"][0].update(models=["model-zeta"]), "spec.jobTypes[0].models[0]"),
        (lambda s: s["jobTypes"][1].update(estimate={"requests": 1}), "spec.jobTypes[1].estimate.tokens"),
        (lambda s: s["models"][0].update(limits={}), "spec.models[0].limits"),
        (lambda s: s.update(defaultJobType="C"), "spec.defaultJobType"),
        (lambda s: s.update(instance={"heartbeatSeconds": 5, "instanceTimeoutSeconds": 5}),
         "instanceTimeoutSeconds"),
        (lambda s: s["jobTypes"][0].update(models=["model-alpha", "model-alpha"]),
         "spec.jobTypes[0].models[1]"),
        # The policy's bound on every limit (2^52, exact in Redis's Lua numbers) names the field.
        (lambda s: s["models"][0]["limits"].update(tokensPerMinute=10**30),
         "spec.models[0].limits.tokensPerMinute"),
    ],
    ids=["ratio-sum", "unknown-model", "estimate", "no-limit", "default-job-type", "timeouts", "dup-models",
         "beyond-2^53"],
)  # fmt: skip
def test_rules_the_schema_cannot_express_name_the_field(change: Any, field: str) -> None:
    spec = copy.deepcopy(SPEC)
    change(spec)
    parsed = parse_policy(body(spec))
    assert not parsed.valid
    assert any(field in p for p in parsed.problems), parsed.problems


def test_an_invalid_spec_still_reports_its_models_and_redis() -> None:
    spec = copy.deepcopy(SPEC)
    spec["jobTypes"][0]["ratio"] = 0.9
    spec["redis"] = {"url": "redis://other:6379/1"}
    parsed = parse_policy(body(spec))
    assert not parsed.valid
    assert parsed.model_names == ("model-alpha",)
    assert parsed.redis == RedisSettings(url="redis://other:6379/1")


def test_a_missing_spec_is_invalid_not_an_error() -> None:
    b = body()
    del b["spec"]
    parsed = parse_policy(b)
    assert not parsed.valid and any("required" in p for p in parsed.problems)


# -- names and labels --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("chat", "chat-limiter"),
        ("a.b", None),
        ("9lives", None),
        ("x" * 60, None),
        ("x" * 55, "x" * 55 + "-limiter"),
    ],
)
def test_child_names_are_dns_labels(policy: str, expected: str | None) -> None:
    name = child_name(policy)
    if expected:
        assert name == expected
    assert len(name) <= 63 and name[0].isalpha() and name.endswith("-limiter")
    assert all((c.isalnum() and c.islower()) or c.isdigit() or c == "-" for c in name)


def test_long_names_stay_distinct() -> None:
    a, b = "p" * 100 + "a", "p" * 100 + "b"
    assert child_name(a) != child_name(b)
    assert policy_label(a) != policy_label(b) and len(policy_label(a)) <= 63


def test_labels_select_one_policy() -> None:
    sel = selector_labels("chat")
    assert sel == {
        "app.kubernetes.io/name": "fleet-limiter",
        "app.kubernetes.io/component": "limiter",
        "fleetlimiter.io/policy": "chat",
    }
    assert labels("chat")["app.kubernetes.io/managed-by"] == MANAGER
    assert sel.items() <= labels("chat").items()


# -- the objects -------------------------------------------------------------------------------------


def test_every_object_is_owned_by_the_policy() -> None:
    parsed = parse_policy(body())
    assert parsed.spec is not None
    objects = build_children(parsed.ref, parsed.spec, redis_source(None, SETTINGS), SETTINGS)
    assert [o["kind"] for o in objects] == ["ServiceAccount", "Deployment", "Service", "PodDisruptionBudget"]
    for obj in objects:
        meta = obj["metadata"]
        assert (meta["name"], meta["namespace"]) == ("chat-limiter", "team-a")
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "fleetlimiter.io/v1alpha1",
                "kind": "RateLimitPolicy",
                "name": "chat",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"] == labels("chat")


def test_deployment_runs_serve_for_the_policy() -> None:
    dep = deployment()
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"] == {"matchLabels": selector_labels("chat")}
    c = container(dep)
    assert c["command"] == ["fleet-limiter", "serve", "--namespace", "team-a", "--name", "chat"]
    assert c["image"] == SETTINGS.limiter_image
    assert env(dep) == {
        "FLEET_LIMITER_REDIS_URL": "redis://redis.infra:6379/0",
        "POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
        "POD_IP": {"fieldRef": {"fieldPath": "status.podIP"}},
        "FLEET_LIMITER_PORT": "8080",
        "FLEET_LIMITER_SHUTDOWN_GRACE_SECONDS": "25",
    }


def test_upstream_keys_in_secrets_reach_the_proxy_as_references() -> None:
    spec = copy.deepcopy(SPEC)
    secret = {"name": "llm-keys", "key": "openai"}
    upstream = {"url": "https://api.example.test", "apiKeySecretRef": secret}
    spec["models"].append({"name": "gpt-4o-mini", "limits": {"tokensPerMinute": 1000}, "upstream": upstream})
    spec["models"].append(
        {"name": "local", "limits": {"tokensPerMinute": 1000}, "upstream": {"url": "http://x"}}
    )
    variables = env(deployment(spec))
    # The name the proxy reads (limiter.proxy.upstream.api_key), as a Secret reference, never the key itself.
    assert variables["FLEET_LIMITER_UPSTREAM_KEY_GPT_4O_MINI"] == {
        "secretKeyRef": {"name": "llm-keys", "key": "openai"}
    }
    assert not any(name.endswith("_LOCAL") for name in variables)


def test_deployment_probes_resources_and_graceful_termination() -> None:
    dep = deployment()
    c = container(dep)
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    pod = dep["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 30
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_limiter_pods_are_non_root_read_only_and_tokenless() -> None:
    dep = deployment()
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "chat-limiter"
    assert pod["enableServiceLinks"] is False
    sc = container(dep)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}


def test_pod_template_does_not_depend_on_limits_or_ratios() -> None:
    changed = copy.deepcopy(SPEC)
    changed["models"][0]["limits"]["tokensPerMinute"] = 50000
    changed["jobTypes"][0]["ratio"], changed["jobTypes"][1]["ratio"] = 0.5, 0.5
    changed["fleet"]["replicas"] = 5
    assert deployment(changed)["spec"]["template"] == deployment()["spec"]["template"]


def test_resource_settings_reach_the_pods() -> None:
    settings = OperatorSettings(
        default_redis_url="redis://r:6379/0",
        limiter_cpu_request="250m",
        limiter_memory_request="1Gi",
        limiter_cpu_limit="2",
        limiter_memory_limit=None,
        termination_grace_seconds=60,
        limiter_image="registry.example/fl:1.2",
        peering_priority=1,
    )
    dep = deployment(settings=settings)
    assert container(dep)["resources"] == {
        "requests": {"cpu": "250m", "memory": "1Gi"},
        "limits": {"cpu": "2"},
    }
    assert container(dep)["image"] == "registry.example/fl:1.2"
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60
    assert env(dep)["FLEET_LIMITER_SHUTDOWN_GRACE_SECONDS"] == "55"


def test_service_and_pdb_select_the_pods() -> None:
    ref = PolicyRef("team-a", "chat", "uid-1", 1)
    svc = build_service(ref)
    assert svc["spec"]["selector"] == selector_labels("chat")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    pdb = build_pdb(ref)
    assert pdb["spec"]["selector"] == {"matchLabels": selector_labels("chat")}
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert build_service_account(ref)["automountServiceAccountToken"] is False


# -- Redis -------------------------------------------------------------------------------------------


def test_redis_source_precedence() -> None:
    secret = SecretKeyRef(name="redis", key="url")
    assert redis_source(RedisSettings(url="redis://a:1/0", secret_ref=secret), SETTINGS) == RedisSource(
        secret=secret
    )
    assert redis_source(RedisSettings(url="redis://a:1/0"), SETTINGS) == RedisSource(url="redis://a:1/0")
    assert redis_source(None, SETTINGS) == RedisSource(url="redis://redis.infra:6379/0")
    with pytest.raises(NoRedis, match=r"spec\.redis\.url"):
        redis_source(None, OperatorSettings(peering_priority=1))


def test_a_secret_url_stays_a_reference_in_the_pods() -> None:
    assert redis_env(RedisSource(secret=SecretKeyRef(name="redis", key="url"))) == {
        "name": "FLEET_LIMITER_REDIS_URL",
        "valueFrom": {"secretKeyRef": {"name": "redis", "key": "url"}},
    }
    assert RedisSource(url="redis://user:hunter2@r:6379/0").describe() == "redis://user:***@r:6379/0"


def test_projected_spec_fills_defaults_and_drops_nulls() -> None:
    parsed = parse_policy(body({**SPEC, "defaultJobType": None}))
    assert parsed.spec is not None
    doc = projected_spec(parsed.spec)
    assert "defaultJobType" not in doc
    assert doc["instance"]["heartbeatSeconds"] == 1
    assert doc["jobTypes"][0]["estimate"] == {"tokens": 10000, "requests": 1, "memoryKB": 0}
