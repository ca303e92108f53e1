"""Suite-wide options and the shared fixtures. Slow matrices run only under `make test-long`
(--run-slow): an explicit opt-in that deselects them, never a skip that hides a missing service."""

from __future__ import annotations

import pytest

#: The shared fixtures (redis_server, fresh_redis_server, fleet): tests/support/plugin.py.
pytest_plugins = ("tests.support.plugin",)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (make test-long)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    keep = [i for i in items if "slow" not in i.keywords]
    dropped = [i for i in items if "slow" in i.keywords]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
