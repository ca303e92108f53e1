"""The documented uninstall (docs/operator.md#uninstall) on a real API server, with real Helm:

- ``helm uninstall`` refuses while a RateLimitPolicy exists (the chart's pre-delete check, run as a
  Job by the cluster) and says which policy and what command removes it; after that command, the
  uninstall goes through and nothing is left: no pod, no Redis key, no namespace in Terminating.
- When the operator is gone for good (``helm uninstall --no-hooks``), a policy's namespace hangs
  in Terminating until ``fleet-limiter-operator release-finalizers`` lets the policies go.

Each test installs a release of its own, in namespaces labelled as the suite's (an interrupted run
is swept by the next). Like test_0_demo.py, they run before the package's install: two operators
must never serve the same cluster.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest

from tests.e2e import env as e2e_env
from tests.e2e.conftest import Tools
from tests.e2e.env import TPM, spec
from tests.e2e.kube import InChartRedis, LocalRedis, RedisAccess, other_operators
from tests.e2e.record import ScenarioRecord
from tests.operator.support import OPERATOR_CLI, Policies, run, uninstall_release, wait_for

pytestmark = pytest.mark.e2e


@dataclass
class Install:
    tools: Tools
    release: str
    namespace: str
    redis: RedisAccess
    policies: Policies

    def operator_pods(self) -> list[str]:
        """The release's operator pods, terminating ones too."""
        selector = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=operator"
        return self.tools.kube.kubectl(
            "get", "pods", "-n", self.namespace, "-l", selector, "-o", "name"
        ).split()

    def wait_operator_gone(self) -> None:
        wait_for("the operator's pods to stop", lambda: not self.operator_pods(), timeout=60, interval=0.5)


@contextmanager
def installed(tools: Tools, record: ScenarioRecord) -> Iterator[Install]:
    """The chart in a fresh labelled namespace, one TPM policy with its pod ready in another; whatever
    the test leaves is removed afterwards (the suite's sweep, for a run interrupted here)."""
    others = other_operators(tools.kube)
    if others:
        pytest.fail(
            f"another fleet-limiter operator runs in this cluster ({', '.join(others)})", pytrace=False
        )
    suffix = os.urandom(3).hex()
    release, namespace, policy_ns = f"e2e-{suffix}", f"fleet-e2e-{suffix}", f"e2e-uninstall-{suffix}"
    kube = tools.kube
    with ExitStack() as stack:
        stack.callback(
            lambda: kube.kubectl("delete", "namespace", namespace, policy_ns, "--wait=false", check=False)
        )
        release_policies = [
            str(OPERATOR_CLI),
            "release-finalizers",
            f"--kubeconfig={kube.kubeconfig}",
            "-n",
            policy_ns,
        ]
        stack.callback(lambda: run(release_policies, check=False))
        stack.callback(lambda: uninstall_release(kube, tools.helm, release, namespace, hooks=False))
        local = LocalRedis() if tools.settings.cluster == "local" else None
        if local is not None:
            stack.callback(local.close)
        e2e_env.create_namespace(kube, namespace, "release")
        e2e_env.create_namespace(kube, policy_ns, "policies")
        record.step(f"helm install {release}")
        e2e_env.install(
            kube, tools.helm, tools.settings, release, namespace, local.chart_url if local else None
        )
        redis: RedisAccess = local if local is not None else InChartRedis(kube, namespace, release)
        if local is None:
            stack.callback(redis.close)
        policies = Policies(kube, policy_ns, redis.url())
        record.step("kubectl apply: tpm, 1 replica")
        policies.apply("tpm", spec(TPM, replicas=1))
        policies.wait_ready("tpm", timeout=120)
        policies.wait_pods("tpm", 1)
        assert policies.redis_keys("tpm", redis.url()), "the policy was not projected into Redis"
        yield Install(tools, release, namespace, redis, policies)


def terminating_namespaces(tools: Tools) -> list[str]:
    items = json.loads(tools.kube.kubectl("get", "namespaces", "-o", "json"))["items"]
    return [n["metadata"]["name"] for n in items if n.get("status", {}).get("phase") == "Terminating"]


def wait_gone(tools: Tools, *namespaces: str) -> None:
    wait_for(
        f"namespaces {', '.join(namespaces)} to go",
        lambda: (
            not tools.kube.kubectl(
                "get", "namespaces", *namespaces, "--ignore-not-found", "-o", "name", check=False
            ).strip()
        ),
        timeout=120,
        interval=0.5,
    )


@pytest.mark.timeout(420)
def test_uninstall_refuses_while_policies_exist_and_then_leaves_nothing(
    swept: Tools, record: ScenarioRecord
) -> None:
    with installed(swept, record) as inst:
        kube, ns = swept.kube, inst.policies.namespace
        record.step("helm uninstall with the policy still there")
        started = time.monotonic()
        refused = uninstall_release(kube, swept.helm, inst.release, inst.namespace)
        record.figure("refusal_s", round(time.monotonic() - started, 1))
        out = refused.stdout + refused.stderr
        assert refused.returncode != 0, out
        # helm prints the check's log: the policy and the command that removes it.
        assert "refusing to uninstall: 1 RateLimitPolicy still exists" in out, out
        assert f"  {ns}/tpm\n" in out, out
        command = "kubectl delete rlp --all --all-namespaces"
        assert f"  {command}\n" in out, out
        # Nothing was removed: the operator still runs, the release is still there (helm marks it
        # uninstalling), and no Job is left.
        assert inst.operator_pods(), "the refused uninstall removed the operator"
        status = json.loads(
            run([str(swept.helm), "status", inst.release, "-n", inst.namespace, "-o", "json",
                 f"--kubeconfig={kube.kubeconfig}"]).stdout
        )  # fmt: skip
        assert status["info"]["status"] == "uninstalling"
        assert not kube.kubectl("get", "jobs", "-n", inst.namespace, "-o", "name").strip()

        record.step(f"the printed command: {command}")
        kube.kubectl(*command.split()[1:], "--timeout=90s", timeout=100)
        assert not inst.policies.all_pods("tpm"), "the policy's pods outlived it"
        assert inst.policies.redis_keys("tpm", inst.redis.url()) == [], "the policy's Redis keys are left"

        record.step("helm uninstall again")
        done = uninstall_release(kube, swept.helm, inst.release, inst.namespace)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f'release "{inst.release}" uninstalled' in done.stdout
        inst.wait_operator_gone()
        assert not kube.kubectl("get", "jobs", "-n", inst.namespace, "-o", "name").strip()

        kube.kubectl("delete", "namespace", inst.namespace, ns, "--wait=false")
        wait_gone(swept, inst.namespace, ns)
        assert terminating_namespaces(swept) == []


@pytest.mark.timeout(420)
def test_release_finalizers_when_the_operator_is_gone_for_good(swept: Tools, record: ScenarioRecord) -> None:
    with installed(swept, record) as inst:
        kube, ns = swept.kube, inst.policies.namespace
        record.step("helm uninstall --no-hooks: the operator gone, the policy left")
        gone = uninstall_release(kube, swept.helm, inst.release, inst.namespace, hooks=False)
        assert gone.returncode == 0, gone.stderr
        inst.wait_operator_gone()

        record.step(f"kubectl delete namespace {ns}: stuck on the finalizer")
        kube.kubectl("delete", "namespace", ns, "--wait=false")
        wait_for(
            "the policy to be marked for deletion",
            lambda: inst.policies.policy("tpm")["metadata"].get("deletionTimestamp"),
            timeout=60,
        )
        time.sleep(3)  # nobody runs the finalizer: the policy and its namespace stay
        assert inst.policies.policy("tpm")["metadata"]["finalizers"] == ["fleetlimiter.io/finalizer"]
        assert ns in terminating_namespaces(swept)

        record.step("fleet-limiter-operator release-finalizers")
        released = run([str(OPERATOR_CLI), "release-finalizers", f"--kubeconfig={kube.kubeconfig}"])
        assert f"released {ns}/tpm (its deletion now completes)" in released.stdout, released.stdout
        assert f"fl:{{{ns}/tpm}}:*" in released.stdout
        wait_gone(swept, ns)
        kube.kubectl("delete", "namespace", inst.namespace, "--wait=false")
        wait_gone(swept, inst.namespace)
        assert terminating_namespaces(swept) == []
        again = run([str(OPERATOR_CLI), "release-finalizers", f"--kubeconfig={kube.kubeconfig}"])
        assert "no RateLimitPolicy carries the fleetlimiter.io/finalizer finalizer" in again.stdout
