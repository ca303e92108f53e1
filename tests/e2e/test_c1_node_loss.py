"""Container scenario (a): a worker node's container stopped or killed (kind only, ``containers``).

Four limiter pods over the two workers, under load on the pods of the other worker. The worker that
holds neither the in-chart Redis nor all the pods is taken away with ``docker stop`` (its systemd
shuts down: pods may still leave gracefully) or, in the other run, ``docker kill`` (SIGKILL to the
whole node: its pods die at once and never deregister). The pods on it are lost; the others
re-divide the capacity within instanceTimeoutSeconds + heartbeatSeconds (by Redis's clock, from when
the node was gone); at no poll does the fleet run more than its limit, nor a pod more than the
largest share it held. Kubernetes marks the node NotReady (Ready Unknown) after its grace period (40 s), which
keeps new pods off it, but evicts its pods only after their tolerations (300 s); the test waits for
NotReady, then does what that eviction does, ``kubectl delete pod --force`` of the lost pods: the
Deployment's replacements start on the other worker and join.
Finally the node container is started again on the address it had, and its kubelet rejoins.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from tests.e2e.env import E2E, MIXED, FleetPolicies, planned, spec
from tests.e2e.record import ScenarioRecord

pytestmark = [pytest.mark.e2e, pytest.mark.containers]

HEARTBEAT_S = MIXED["instance"]["heartbeatSeconds"]
TIMEOUT_S = MIXED["instance"]["instanceTimeoutSeconds"]
#: The fleet-wide limit of the policy.
LIMIT = MIXED["models"][0]["limits"]["maxConcurrentRequests"]
#: Poll and listing slack on top of the SPEC's bound (the watch polls every 25 ms, lists every 0.25 s).
SLACK_S = 1.0


def docker(*args: str, timeout: float = 60) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"docker {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout.strip()


def node_address(node: str) -> tuple[str, str]:
    """The node container's Docker network and address on it."""
    nets = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", node))
    ((net, info),) = nets.items()
    return net, str(info["IPAddress"])


def bring_back(e2e: E2E, node: str, net: str, ip: str) -> float:
    """Start the node container again on the same address (the kubelet's node IP and certificates
    name it), and wait until the node is Ready; returns the seconds that took."""
    started = time.time()
    if docker("inspect", "-f", "{{.State.Running}}", node) != "true":
        docker("network", "disconnect", "-f", net, node)
        docker("network", "connect", "--ip", ip, net, node)
        docker("start", node)
    e2e.cluster.kubectl("wait", "--for=condition=Ready", f"node/{node}", "--timeout=240s", timeout=250)
    return time.time() - started


@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_lost_worker_node_is_evicted_and_replaced(
    e2e: E2E, policies: FleetPolicies, record: ScenarioRecord, how: str
) -> None:
    s = spec(MIXED, replicas=4)
    redis_selector = f"app.kubernetes.io/instance={e2e.release},app.kubernetes.io/component=redis"
    with e2e.watch(policies, "mixed", record) as watch:
        policies.apply("mixed", s)
        watch.wait_agreed(4, planned(s, 4), timeout=180)
        placed = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in policies.pods("mixed")}
        redis = json.loads(
            e2e.cluster.kubectl("get", "pods", "-n", e2e.namespace, "-l", redis_selector, "-o", "json")
        )["items"]
        redis_nodes = {p["spec"]["nodeName"] for p in redis}
        candidates = sorted(n for n in set(placed.values()) if n not in redis_nodes)
        assert candidates and len(set(placed.values())) > 1, (
            f"need limiter pods on a worker without Redis and on another: pods {placed}, "
            f"Redis on {redis_nodes}"
        )
        victim = candidates[0]
        lost = sorted(p for p, n in placed.items() if n == victim)
        survivors = sorted(p for p, n in placed.items() if n != victim)
        record.event("placement", victim=victim, lost=lost, survivors=survivors, redis=sorted(redis_nodes))
        net, ip = node_address(victim)
        try:
            jobs = watch.jobs()
            by_name = {p.name: p for p in watch.pods()}
            targets = [(n, by_name[n].url) for n in survivors if by_name[n].url]
            record.step(f"load: {LIMIT} workers on the {len(survivors)} pods of the other nodes")
            stream = jobs.start_stream(
                lambda: targets, ["interactive", "batch", "eval"], workers=LIMIT, hold=(0.2, 0.5),
                seconds=120, wait=60,
            )  # fmt: skip
            time.sleep(3)
            record.step(f"docker {how} {victim} (pods {', '.join(lost)})")
            mark, issued = watch.mark(), time.time()
            docker(how, victim, timeout=120)
            gone = time.time()
            count = len(survivors)
            rec = watch.wait(
                f"the fleet down to {count}",
                lambda: [r for r in watch.records(mark) if r.count == count],
                timeout=TIMEOUT_S + HEARTBEAT_S + 30,
            )[0]
            watch.wait(
                "the survivors to report it",
                lambda: all(watch.first_seen(p, rec.epoch) for p in survivors),
                timeout=10,
            )
            agreed_s = watch.latency(rec, survivors)
            record.event("node.lost", reason=rec.reason, epoch=rec.epoch, count=rec.count)

            # Kubernetes sees the node gone after its grace period (NotReady, tainted unreachable: no
            # new pod goes there); its pods would be evicted after their 300 s tolerations: done now.
            e2e.cluster.kubectl(
                "wait", "--for=condition=Ready=Unknown", f"node/{victim}", "--timeout=120s", timeout=130
            )
            not_ready_s = time.time() - gone
            record.step(f"node {victim} NotReady; kubectl delete pod --force {' '.join(lost)}")
            replaced_from = time.time()
            policies.kubectl("delete", "pod", *lost, "--grace-period=0", "--force", check=False)
            # The eviction takes every pod of the node: the operator's too, when it ran there (its
            # finalizer must run when the test's policies are deleted afterwards).
            for op in e2e.operator_pods():
                if op["spec"].get("nodeName") == victim:
                    e2e.cluster.kubectl(
                        "delete", "pod", op["metadata"]["name"], "-n", e2e.namespace,
                        "--grace-period=0", "--force", check=False,
                    )  # fmt: skip
                    record.event("operator.evicted", pod=op["metadata"]["name"])
            final = watch.wait_agreed(4, planned(s, 4), timeout=180)
            replaced_s = time.time() - replaced_from
            time.sleep(2)
            jobs.stop_streams()
            stream.result(10)
            counts = jobs.counts()
        finally:
            back_s = bring_back(e2e, victim, net, ip)

    # Never above the fleet's limit. (A pod may hold more than its new slots for a moment when the
    # replacements join: leases are never preempted, it drains to its share; scenario 6 times that.)
    # The load goes to the survivors only; the largest share one can hold is the limit over them.
    share = LIMIT // len(survivors)
    assert max(sum(x.in_flight.values()) for x in watch.samples) <= share
    fleet_max = max_fleet_in_flight(watch.samples)
    assert fleet_max <= LIMIT, f"{fleet_max} in flight over the fleet, limit {LIMIT}"
    assert set(lost).isdisjoint(p.name for p in final)
    assert {placed.get(p.name) for p in final if p.name in placed} <= set(placed.values())
    bound = TIMEOUT_S + HEARTBEAT_S
    gone_to_change = rec.changed_at - gone
    record.figure("docker_command_s", round(gone - issued, 3))
    record.figure("gone_to_redis_change_s", round(gone_to_change, 3))
    record.figure("redis_change_to_survivors_agreed_s", round(agreed_s, 4))
    record.figure("gone_to_node_not_ready_s", round(not_ready_s, 3))
    record.figure("force_delete_to_replacements_agreed_s", round(replaced_s, 3))
    record.figure("node_back_ready_s", round(back_s, 3))
    record.figure("fleet_max_in_flight", fleet_max)
    record.figure(
        "jobs", dict(counts),
        headline=f"docker {how}: {rec.reason} {gone_to_change:.1f} s after the node was gone "
        f"(bound {bound} s), "
        f"survivors agreed {agreed_s * 1000:.0f} ms later; fleet max {fleet_max}/{LIMIT} in flight",
    )  # fmt: skip
    assert gone_to_change <= bound + SLACK_S, (rec, gone)
    assert agreed_s < 1.0
    assert counts.get("completed", 0) > 20 and set(counts) <= {"completed"}, counts


def max_fleet_in_flight(samples: list[Any]) -> int:
    """The most in flight over the fleet at once: at every sample, the sum of each pod's latest
    sample no older than 0.5 s (a lost pod's last samples stop counting after that)."""
    latest: dict[str, Any] = {}
    most = 0
    for x in sorted(samples, key=lambda x: x.t):
        latest[x.pod] = x
        total = sum(sum(v.in_flight.values()) for v in latest.values() if x.t - v.t <= 0.5)
        most = max(most, total)
    return most
