from __future__ import annotations

from typing import Any

import pytest

from limiter.policy import PolicySpec, parse_policy


def make_spec(models: list[dict[str, Any]], job_types: list[dict[str, Any]], **extra: Any) -> PolicySpec:
    """A validated spec from compact dicts (the wire format)."""
    spec, _ = parse_policy({"models": models, "jobTypes": job_types, **extra})
    return spec


@pytest.fixture
def spec_factory():  # type: ignore[no-untyped-def]
    return make_spec
