"""Every validation rule of SPEC section 2, each with its message checked."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from limiter.core.policy import PolicyError, load_policy, loads_policy, parse_policy

BASE: dict[str, Any] = {
    "models": [
        {"name": "alpha", "limits": {"tokensPerMinute": 100_000, "requestsPerMinute": 500}},
        {"name": "beta", "limits": {"maxConcurrentRequests": 10}},
    ],
    "jobTypes": [
        {"name": "summary", "ratio": 0.6, "estimate": {"tokens": 10_000, "requests": 1}},
        {
            "name": "fill",
            "ratio": 0.4,
            "flexible": False,
            "estimate": {"tokens": 2_000},
            "models": ["beta", "alpha"],
        },
    ],
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    """BASE with one field set (dotted path, integers index lists); value ... deletes it."""
    doc = copy.deepcopy(BASE)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = doc
    for p in parents:
        node = node[p]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return doc


def problems(doc: Any) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    return info.value.problems


def test_base_is_valid_and_defaults_are_documented_ones() -> None:
    spec, meta = parse_policy(BASE)
    assert meta.name == "default"
    assert spec.default_job_type_name == "summary"
    assert spec.job_type("summary").flexible is True
    assert spec.job_type("fill").flexible is False
    assert spec.models_of(spec.job_type("summary")) == ["alpha", "beta"]
    assert spec.models_of(spec.job_type("fill")) == ["beta", "alpha"]
    assert spec.job_type("summary").queue.max_waiting == 512
    assert spec.instance.heartbeat_seconds == 1
    assert spec.instance.instance_timeout_seconds == 5
    assert spec.instance.lease_timeout_seconds == 600


RULES = [
    (
        "unknown model in models",
        with_change("jobTypes.1.models", ["beta", "gamma"]),
        "spec.jobTypes[1].models[1]: unknown model 'gamma' in job type 'fill'; known models: alpha, beta",
    ),
    (
        "duplicate model",
        with_change("models.1.name", "alpha"),
        "spec.models[1].name: duplicate name 'alpha'; names must be unique",
    ),
    (
        "duplicate job type",
        with_change("jobTypes.1.name", "summary"),
        "spec.jobTypes[1].name: duplicate name 'summary'; names must be unique",
    ),
    (
        "duplicate model in a job type's list",
        with_change("jobTypes.1.models", ["beta", "beta"]),
        "spec.jobTypes[1].models[1].name: duplicate name 'beta'",
    ),
    (
        "ratio zero",
        with_change("jobTypes.0.ratio", 0),
        "spec.jobTypes[0].ratio: 0 is not valid: a ratio must be greater than 0 and at most 1",
    ),
    (
        "ratio above one",
        with_change("jobTypes.0.ratio", 1.2),
        "spec.jobTypes[0].ratio: 1.2 is not valid: a ratio must be greater than 0 and at most 1",
    ),
    (
        "ratio negative",
        with_change("jobTypes.0.ratio", -0.5),
        "spec.jobTypes[0].ratio: -0.5 is not valid: a ratio must be greater than 0 and at most 1",
    ),
    (
        "ratios not summing to 1",
        with_change("jobTypes.1.ratio", 0.3),
        "spec.jobTypes[*].ratio: ratios sum to 0.9 (0.6 + 0.3); they must sum to exactly 1",
    ),
    ("ratios above 1", with_change("jobTypes.1.ratio", 0.5), "ratios sum to 1.1 (0.6 + 0.5)"),
    (
        "model with no limit",
        with_change("models.1.limits", {}),
        "spec.models[1].limits: model 'beta' sets no limit; set at least one of tokensPerMinute",
    ),
    (
        "limited dimension without estimate",
        with_change("jobTypes.1.estimate", {"requests": 1}),
        "spec.jobTypes[1].estimate.tokens: job type 'fill' estimates 0 tokens but may use model 'alpha', "
        "which limits tokensPerMinute; set a positive estimate.tokens",
    ),
    (
        "requests estimate zero on RPM model",
        with_change("jobTypes.0.estimate.requests", 0),
        "spec.jobTypes[0].estimate.requests: job type 'summary' estimates 0 requests "
        "but may use model 'alpha', "
        "which limits requestsPerMinute",
    ),
    (
        "negative limit",
        with_change("models.0.limits.tokensPerMinute", -5),
        "spec.models[0].limits.tokensPerMinute: -5 is not valid: input should be greater than or equal to 1",
    ),
    (
        "negative estimate",
        with_change("jobTypes.0.estimate.tokens", -1),
        "spec.jobTypes[0].estimate.tokens: -1 is not valid: input should be greater than or equal to 0",
    ),
    (
        "negative memory",
        with_change("jobTypes.0.estimate.memoryKB", -1),
        "spec.jobTypes[0].estimate.memoryKB: -1 is not valid",
    ),
    (
        "negative queue",
        with_change("jobTypes.0.queue", {"maxWaiting": -1}),
        "spec.jobTypes[0].queue.maxWaiting: -1 is not valid",
    ),
    ("negative replicas", {**BASE, "fleet": {"replicas": -1}}, "spec.fleet.replicas: -1 is not valid"),
    (
        "unknown field in a job type",
        with_change("jobTypes.0.ratoi", 0.6),
        "spec.jobTypes[0].ratoi: unknown field",
    ),
    ("unknown top-level field", {**BASE, "modles": []}, "spec.modles: unknown field"),
    (
        "unknown limit",
        with_change("models.0.limits.tokensPerHour", 5),
        "spec.models[0].limits.tokensPerHour: unknown field",
    ),
    (
        "wrong type",
        with_change("models.0.limits.tokensPerMinute", "lots"),
        'spec.models[0].limits.tokensPerMinute: "lots" is not valid: input should be a valid integer',
    ),
    (
        "unknown default job type",
        {**BASE, "defaultJobType": "nope"},
        "spec.defaultJobType: unknown job type 'nope'; known job types: summary, fill",
    ),
    ("missing models", with_change("models", ...), "spec.models: required field is missing"),
    ("empty job types", with_change("jobTypes", []), "spec.jobTypes: list should have at least 1 item"),
    (
        "bad protocol",
        with_change("models.0.upstream", {"url": "http://x", "protocol": "grpc"}),
        "spec.models[0].upstream.protocol: \"grpc\" is not valid: input should be 'openai' or 'ollama'",
    ),
    (
        "timeout not above heartbeat",
        {**BASE, "instance": {"heartbeatSeconds": 5, "instanceTimeoutSeconds": 5}},
        "spec.instance.instanceTimeoutSeconds: 5 must be greater than heartbeatSeconds (5)",
    ),
]


@pytest.mark.parametrize(("rule", "doc", "message"), RULES, ids=[r[0] for r in RULES])
def test_validation_rule(rule: str, doc: Any, message: str) -> None:
    found = problems(doc)
    assert any(message in p for p in found), found


def test_full_manifest_and_bare_spec_load_alike() -> None:
    manifest = {
        "apiVersion": "fleetlimiter.io/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": "chat", "namespace": "team-a"},
        "spec": BASE,
    }
    spec, meta = parse_policy(manifest)
    assert (meta.name, meta.namespace) == ("chat", "team-a")
    assert spec == parse_policy(BASE)[0]


def test_manifest_errors_are_rooted_at_spec() -> None:
    doc = {"kind": "RateLimitPolicy", "spec": with_change("jobTypes.0.ratio", 2)}
    assert problems(doc)[0].startswith("spec.jobTypes[0].ratio: 2 is not valid")
    doc = {"kind": "RateLimitPolicy", "spec": with_change("jobTypes.1.ratio", 0.3)}
    assert problems(doc)[0].startswith("spec.jobTypes[*].ratio: ratios sum to 0.9")


def test_wrong_kind_is_named() -> None:
    assert problems({"kind": "Deployment", "spec": {}}) == [
        'kind: "Deployment" is not valid: expected RateLimitPolicy'
    ]


def test_not_a_mapping() -> None:
    assert problems([1, 2]) == ["policy: expected a mapping (a RateLimitPolicy manifest or its spec)"]


def test_yaml_and_json_text(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(BASE))
    assert load_policy(tmp_path / "p.json")[0].job_types[0].name == "summary"
    with pytest.raises(PolicyError, match=r"not valid YAML or JSON at line 3, column 1"):
        loads_policy("models:\n  - [unclosed\n")
    with pytest.raises(PolicyError, match="no such policy file"):
        load_policy(tmp_path / "missing.yaml")


def test_exact_ratio_and_round_trip() -> None:
    spec, _ = parse_policy(with_change("jobTypes.0.ratio", 0.6))
    from fractions import Fraction

    assert spec.job_types[0].exact_ratio == Fraction(3, 5)
    wire = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert wire["jobTypes"][0]["estimate"] == {"tokens": 10_000, "requests": 1, "memoryKB": 0}
    assert parse_policy(wire)[0] == spec


def test_ratio_thirds_must_be_written_to_sum_exactly() -> None:
    third = 0.3333333333333333
    jobs = [{"name": f"j{i}", "ratio": third, "estimate": {"tokens": 1}} for i in range(3)]
    found = problems({"models": BASE["models"][:1], "jobTypes": jobs})
    assert "they must sum to exactly 1" in found[0]
    jobs[2]["ratio"] = 0.3333333333333334
    assert parse_policy({"models": BASE["models"][:1], "jobTypes": jobs})


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).parents[2].joinpath("examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_example_is_valid(path: Path) -> None:
    spec, meta = load_policy(path)
    assert spec.models and spec.job_types and meta.name
