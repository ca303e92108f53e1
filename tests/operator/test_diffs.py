"""What counts as a difference worth a write."""

from __future__ import annotations

from typing import Any

import pytest
from limiter_operator.diffs import differences

from limiter.k8s.quantity import quantity

WANT: dict[str, Any] = {
    "metadata": {"labels": {"a": "1"}},
    "spec": {"replicas": 2, "template": {"containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]}},
}


def test_server_defaults_and_extra_fields_are_not_differences() -> None:
    have = {
        "metadata": {"labels": {"a": "1", "pod-template-hash": "x"}, "resourceVersion": "7"},
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 600,
            "template": {
                "containers": [{"name": "c", "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]
            },
        },
        "status": {"readyReplicas": 2},
    }
    assert differences(WANT, have) == []


@pytest.mark.parametrize(
    "have, expected",
    [
        ({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 3, "template": WANT["spec"]["template"]}},
         [".spec.replicas: 3 -> 2"]),
        ({"metadata": {"labels": {}}, "spec": WANT["spec"]}, [".metadata.labels.a: missing -> '1'"]),
        ({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 2, "template": {"containers": []}}},
         [".spec.template.containers: [] -> [{'name': 'c', 'ports': [{'containerPort': 8080}]}]"]),
    ],
)  # fmt: skip
def test_differences_name_the_field(have: dict[str, Any], expected: list[str]) -> None:
    assert differences(WANT, have) == expected


def test_booleans_are_not_numbers() -> None:
    assert differences({"x": True}, {"x": 1}) == [".x: 1 -> True"]
    assert differences({"x": 1}, {"x": 1.0}) == []


@pytest.mark.parametrize("a, b", [("100m", "0.1"), ("1", "1000m"), ("1Gi", "1024Mi"), ("128Mi", "134217728")])
def test_quantities_compare_by_value(a: str, b: str) -> None:
    assert quantity(a) == quantity(b)
    assert differences({"cpu": a}, {"cpu": b}) == []


def test_non_quantities_compare_as_text() -> None:
    assert quantity("http") is None
    assert differences({"port": "http"}, {"port": "https"}) == [".port: 'https' -> 'http'"]
