"""The operator's settings from the environment."""

from __future__ import annotations

import pytest
from limiter_operator.settings import OperatorSettings, SettingsError


def test_defaults() -> None:
    s = OperatorSettings.from_env({})
    assert s.clusterwide and s.namespaces == ()
    assert s.default_redis_url is None
    assert s.status_interval_seconds == 5.0
    assert (s.limiter_cpu_request, s.limiter_memory_request, s.limiter_memory_limit) == (
        "100m",
        "128Mi",
        "256Mi",
    )
    assert s.standalone is False and s.health_address is None
    assert 1 <= s.peering_priority < 2**31


def test_every_variable() -> None:
    s = OperatorSettings.from_env(
        {
            "FLEET_LIMITER_OPERATOR_NAMESPACES": "team-a, team-b",
            "FLEET_LIMITER_DEFAULT_REDIS_URL": "redis://redis:6379/0",
            "FLEET_LIMITER_OPERATOR_STATUS_INTERVAL": "0.5",
            "FLEET_LIMITER_OPERATOR_DELETE_TIMEOUT": "30",
            "FLEET_LIMITER_LIMITER_IMAGE": "registry/fl:2",
            "FLEET_LIMITER_LIMITER_IMAGE_PULL_POLICY": "Always",
            "FLEET_LIMITER_LIMITER_CPU_REQUEST": "250m",
            "FLEET_LIMITER_LIMITER_MEMORY_REQUEST": "1Gi",
            "FLEET_LIMITER_LIMITER_CPU_LIMIT": "2",
            "FLEET_LIMITER_LIMITER_MEMORY_LIMIT": "",
            "FLEET_LIMITER_LIMITER_TERMINATION_GRACE_SECONDS": "60",
            "FLEET_LIMITER_OPERATOR_PEERING": "mine",
            "FLEET_LIMITER_OPERATOR_PRIORITY": "7",
            "FLEET_LIMITER_OPERATOR_STANDALONE": "true",
            "FLEET_LIMITER_OPERATOR_HEALTH_ADDRESS": "127.10.0.3:8081",
            "FLEET_LIMITER_OPERATOR_LOG_LEVEL": "debug",
        }
    )
    assert s == OperatorSettings(
        namespaces=("team-a", "team-b"),
        default_redis_url="redis://redis:6379/0",
        status_interval_seconds=0.5,
        delete_timeout_seconds=30.0,
        limiter_image="registry/fl:2",
        limiter_image_pull_policy="Always",
        limiter_cpu_request="250m",
        limiter_memory_request="1Gi",
        limiter_cpu_limit="2",
        limiter_memory_limit=None,
        termination_grace_seconds=60,
        peering_name="mine",
        peering_priority=7,
        standalone=True,
        health_address="127.10.0.3:8081",
        log_level="DEBUG",
    )
    assert not s.clusterwide


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("OPERATOR_NAMESPACES", "team-*", "exact names"),
        ("DEFAULT_REDIS_URL", "http://user:secret@r:6379", "redis://"),
        ("OPERATOR_STATUS_INTERVAL", "0", "a positive number"),
        ("OPERATOR_STATUS_INTERVAL", "soon", "a positive number"),
        ("LIMITER_TERMINATION_GRACE_SECONDS", "1.5", "a positive integer"),
        ("LIMITER_MEMORY_LIMIT", "lots", "Kubernetes quantity"),
        ("LIMITER_IMAGE_PULL_POLICY", "Sometimes", "Always, IfNotPresent or Never"),
        ("OPERATOR_PRIORITY", "high", "an integer"),
        ("OPERATOR_STANDALONE", "maybe", "true or false"),
        ("OPERATOR_HEALTH_ADDRESS", "8081", "host:port"),
        ("OPERATOR_LOG_LEVEL", "loud", "DEBUG, INFO"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as err:
        OperatorSettings.from_env({f"FLEET_LIMITER_{name}": value})
    assert str(err.value).startswith(f"FLEET_LIMITER_{name}: ")
    assert message in str(err.value)
    assert "secret" not in str(err.value)  # passwords never reach a message
