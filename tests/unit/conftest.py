from __future__ import annotations

from typing import Any

from limiter.core.policy import PolicySpec, parse_policy


def make_spec(models: list[dict[str, Any]], job_types: list[dict[str, Any]], **extra: Any) -> PolicySpec:
    """A validated spec from compact dicts (the wire format)."""
    spec, _ = parse_policy({"models": models, "jobTypes": job_types, **extra})
    return spec
