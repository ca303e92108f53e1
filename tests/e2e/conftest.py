"""Fixtures of the e2e suite: one Helm install of the chart for the whole package, a namespace of
policies per test, and the suite's record (tests/results/e2e/) with its summary table.

The install is package-scoped, so it is uninstalled as soon as the last e2e test ran: in a full
``make test`` run, tests/operator installs its own operator after this package, and two operators
must never act on the same policies. Nothing is skipped: a cluster, helm or redis-server that is
missing fails the tests with what to run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.cluster import conftest as cluster_conftest
from tests.cluster.conftest import Cluster
from tests.e2e import env as e2e_env
from tests.e2e.env import E2E, FleetPolicies
from tests.e2e.kube import (
    E2E_LABEL,
    ROOT,
    ApiProxyAccess,
    DirectAccess,
    E2EConfigError,
    InChartRedis,
    LocalRedis,
    PodAccess,
    RedisAccess,
    Settings,
    external_cluster,
    other_operators,
)
from tests.e2e.record import Recorder, ScenarioRecord
from tests.operator.support import purge_stale
from tests.support.redis_server import RedisServerMissing

#: The local cluster, once per session (tests/cluster/conftest.py).
cluster = cluster_conftest.cluster

RESULTS = ROOT / "tests" / "results" / "e2e"
_RECORDER = pytest.StashKey[Recorder]()
_REPORT = pytest.StashKey[dict[str, pytest.TestReport]]()


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except E2EConfigError as exc:
        pytest.fail(str(exc), pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "containers: e2e only real containers can show (kind: docker stop/kill of a node, cgroup limits, "
        "the in-chart Redis); selected by FLEET_E2E_CONTAINERS=1 (make e2e-kind), deselected otherwise",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselected (reported as such, never skipped): the scenarios marked ``containers`` unless
    ``FLEET_E2E_CONTAINERS=1`` selects them (tools/kind/e2e.sh; the local control plane has no
    containers), and on another cluster than the local one the demo (tools/demo.py) and the tests that
    interrupt it."""
    if os.environ.get("FLEET_E2E_CONTAINERS", "0") != "1":
        containers = [i for i in items if i.get_closest_marker("containers")]
        if containers:
            config.hook.pytest_deselected(items=containers)
            items[:] = [i for i in items if i not in containers]
    if os.environ.get("FLEET_E2E_CLUSTER", "local") == "local":
        return
    local_only = ("tests/e2e/test_0_demo.py", "tests/e2e/test_0_interrupted.py")
    demo = [i for i in items if i.nodeid.startswith(local_only)]
    if demo:
        config.hook.pytest_deselected(items=demo)
        items[:] = [i for i in items if i not in demo]


def _recorder(config: pytest.Config) -> Recorder:
    """The session's record file, made on first use."""
    if _RECORDER not in config.stash:
        try:
            settings = Settings.from_env()
        except E2EConfigError:  # the e2e fixture fails with the message; the record names the default
            settings = Settings()
        config.stash[_RECORDER] = Recorder(RESULTS, settings.cluster, dataclasses.asdict(settings))
    return config.stash[_RECORDER]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    item.stash.setdefault(_REPORT, {})[report.when] = report
    if report.when == "setup" and report.failed and item.nodeid.startswith("tests/e2e/"):
        # A fixture failed before this test's record existed (the install, the cluster): record that.
        recorder = _recorder(item.config)
        if not any(t.test == item.nodeid for t in recorder.tests):
            rec = recorder.start(item.nodeid)
            rec.outcome, rec.duration = "error", report.duration
            rec.event("setup.failed", error=str(report.longrepr)[-2000:])
            recorder.write()
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The summary table of the e2e tests that ran, and where their record is."""
    recorder = terminalreporter.config.stash.get(_RECORDER, None)
    if recorder is None or not recorder.tests:
        return
    path = recorder.write()
    terminalreporter.write_sep("=", "e2e summary")
    for line in recorder.table():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"record: {path.relative_to(ROOT)}")


@pytest.fixture(scope="session")
def e2e_recorder(pytestconfig: pytest.Config) -> Recorder:
    """The session's record file (written after each test and at the end)."""
    return _recorder(pytestconfig)


@pytest.fixture
def record(e2e_recorder: Recorder, request: pytest.FixtureRequest) -> Iterator[ScenarioRecord]:
    """This test's part of the record: events, figures and its outcome."""
    rec = e2e_recorder.start(request.node.nodeid)
    started = time.monotonic()
    yield rec
    reports = request.node.stash.get(_REPORT, {})
    call = reports.get("call")
    setup = reports.get("setup")
    if setup is not None and setup.failed:
        rec.outcome = "error"
    elif call is not None:
        rec.outcome = call.outcome
    rec.duration = time.monotonic() - started
    e2e_recorder.write()


@dataclasses.dataclass(frozen=True)
class Tools:
    """The cluster the settings name and the helm that installs on it."""

    settings: Settings
    kube: Cluster
    helm: Path


@pytest.fixture(scope="session")
def e2e_cluster(request: pytest.FixtureRequest) -> Tools:
    """The cluster of the suite (local, or ``$KUBECONFIG``) with its helm."""
    settings = _settings()
    if settings.cluster == "local":
        local = request.getfixturevalue("cluster")
        helm = local.bin_dir / "helm"
        if not helm.exists():
            pytest.fail(
                f"{helm} is missing: run `make cluster-build` (it builds kubectl and helm)", pytrace=False
            )
        return Tools(settings, local, helm)
    try:
        kube = external_cluster()
    except E2EConfigError as exc:
        pytest.fail(str(exc), pytrace=False)
    found = shutil.which("helm")
    if not found:
        pytest.fail("helm is not on PATH (FLEET_E2E_CLUSTER=kubeconfig uses the one on PATH)", pytrace=False)
    return Tools(settings, kube, Path(found))


@pytest.fixture(scope="session")
def swept(e2e_cluster: Tools) -> Tools:
    """What an interrupted run of the suite left (namespaces labelled ``fleet-limiter-e2e``: its
    operator, policies, pods) is removed once, before the session's first test on the cluster."""
    purge_stale(e2e_cluster.kube, e2e_cluster.helm, E2E_LABEL)
    return e2e_cluster


@pytest.fixture(autouse=True)
def _sweep_first(request: pytest.FixtureRequest) -> None:
    """Every test on the cluster, whichever runs first (the demo's uses only ``cluster``), starts
    after the sweep; the package install depends on it directly, since it is set up before any
    function-scoped fixture."""
    if {"cluster", "e2e", "e2e_cluster"} & set(request.fixturenames):
        request.getfixturevalue("swept")


@pytest.fixture(scope="package")
def e2e(swept: Tools) -> Iterator[E2E]:
    """The chart installed with Helm for the package, on the cluster the settings name, with its Redis."""
    settings, kube, helm = swept.settings, swept.kube, swept.helm
    suffix = os.urandom(3).hex()
    release, namespace = f"e2e-{suffix}", f"fleet-e2e-{suffix}"
    others = other_operators(kube)
    if others:
        pytest.fail(
            f"another fleet-limiter operator runs in this cluster ({', '.join(others)}); it would act on the "
            "suite's policies too: uninstall it first",
            pytrace=False,
        )
    with ExitStack() as stack:
        access: PodAccess = DirectAccess() if settings.pod_access == "direct" else ApiProxyAccess(kube)
        stack.callback(access.close)
        redis: RedisAccess | None = None
        if settings.cluster == "local":
            try:
                redis = LocalRedis()
            except RedisServerMissing as exc:
                pytest.fail(str(exc), pytrace=False)
            stack.callback(redis.close)
        e2e_env.create_namespace(kube, namespace, "release")
        stack.callback(e2e_env.uninstall, kube, helm, release, namespace)
        e2e_env.install(kube, helm, settings, release, namespace, redis.chart_url if redis else None)
        if redis is None:
            redis = InChartRedis(kube, namespace, release)
            stack.callback(redis.close)
        yield E2E(settings, kube, helm, access, redis, release, namespace)


@pytest.fixture
def new_namespace(e2e: E2E, request: pytest.FixtureRequest) -> Iterator[Callable[[], FleetPolicies]]:
    """Makes fresh namespaces for the test's policies; each is cleaned up after the test."""
    base = request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")
    with ExitStack() as stack:
        yield lambda: stack.enter_context(e2e_env.policy_namespace(e2e, base[:30]))


@pytest.fixture
def policies(new_namespace: Callable[[], FleetPolicies]) -> FleetPolicies:
    """One fresh namespace for the test's policies."""
    return new_namespace()
