"""Container scenario (b): memory as a limiter pod's container sees it (kind only, ``containers``).

The chart gives every limiter container a memory limit of 256 MiB (``limiter.resources.limits``).
Inside the pod, ``/queue/memory`` reports that cgroup limit, not the node's memory (the host's: the
node containers share its kernel), and the slots of a job type with a memory estimate follow it: with
no ``memoryBudgetMB`` an instance uses 80% of its container's limit (SPEC section 3), and
``recommended_parallel`` is those slots, bounded by what the container has available now.

Then the container goes over its limit: a process started in it with ``kubectl exec`` fills a
memfd (shared memory, charged to the container's cgroup) until the kernel's OOM killer acts inside
that cgroup. The limiter itself cannot be made to grow on demand; that memory is in no process's
resident set, so the largest process, the limiter (pid 1 of the container, also given
``oom_score_adj`` 1000, which needs no capability), is the one killed. (A first version allocated
in the process itself: the kernel rightly killed that process and left the limiter alone.) The
kubelet reports ``OOMKilled`` and restarts the container in the same pod, and the new
process registers again and serves jobs.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from tests.e2e.env import E2E, FleetPolicies, slots_of, spec
from tests.e2e.record import ScenarioRecord

pytestmark = [pytest.mark.e2e, pytest.mark.containers]

#: The chart's default memory limit of a limiter container (charts/fleet-limiter/values.yaml).
LIMIT_BYTES = 256 * 2**20
#: Memory estimate of the one job type: 20 MiB.
MEMORY_KB = 20480
#: Concurrency only, far above what memory allows, so the memory bound decides the slots; the upstream
#: makes model-alpha a proxied model (its parallel limit enters recommended_parallel); nothing is sent
#: to it.
MEM: dict[str, Any] = {
    "models": [
        {
            "name": "model-alpha",
            "limits": {"maxConcurrentRequests": 1000},
            "upstream": {"url": "http://127.0.0.1:9", "protocol": "openai"},
        }
    ],
    "jobTypes": [{"name": "A", "ratio": 1, "estimate": {"memoryKB": MEMORY_KB}}],
    "instance": {"heartbeatSeconds": 1, "instanceTimeoutSeconds": 5},
    "fleet": {"replicas": 1},
}
#: Run in the limiter container: make pid 1 the OOM killer's first choice, then write 8 MiB at a time
#: into a memfd (shared memory charged to the container's cgroup but not to this process's resident
#: set, so the limiter, the largest process, is the one the kernel kills) up to twice the limit. The
#: memory goes with this process, which dies with the container: the restart starts clean.
HOG = (
    "import os, time\n"
    "open('/proc/1/oom_score_adj', 'w').write('1000')\n"
    "fd = os.memfd_create('e2e-oom')\n"
    "chunk = b'x' * (8 << 20)\n"
    f"for _ in range({2 * LIMIT_BYTES // (8 << 20)}):\n"
    "    os.write(fd, chunk)\n"
    "    time.sleep(0.02)\n"
)


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return dict(json.loads(resp.read()))


def host_memory_bytes() -> int:
    """MemTotal of the kernel the node containers share (this machine's)."""
    with open("/proc/meminfo") as meminfo:
        lines = meminfo.read().splitlines()
    for line in lines:
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def limiter_status(pod: dict[str, Any]) -> dict[str, Any]:
    (status,) = [c for c in pod["status"].get("containerStatuses") or [] if c["name"] == "limiter"]
    return dict(status)


@pytest.mark.timeout(300)
def test_memory_follows_the_cgroup_and_an_oom_killed_pod_rejoins(
    e2e: E2E, policies: FleetPolicies, record: ScenarioRecord
) -> None:
    s = spec(MEM, replicas=1)
    expected_slots = int(LIMIT_BYTES * 0.8) // 1024 // MEMORY_KB  # 10
    host_slots = min(1000, int(host_memory_bytes() * 0.8) // 1024 // MEMORY_KB)
    with e2e.watch(policies, "mem", record) as watch:
        record.step("kubectl apply: mem, 1 replica, memoryKB 20480 per job")
        policies.apply("mem", s)

        def one_ready() -> Any:
            pods, views = watch.ready_pods(), watch.views()
            if len(pods) == 1 and pods[0].name in views and views[pods[0].name].count == 1:
                return pods[0]
            return None

        pod = watch.wait("the pod ready and registered", one_ready, timeout=120)
        doc = watch.views()[pod.name].doc
        memory = get_json(e2e.access.url(pod.pod) + "/queue/memory")
        record.event("memory", pod=pod.name, **memory)
        cgroup = policies.kubectl(
            "exec", pod.name, "-c", "limiter", "--", "python3", "-c",
            "from limiter.fleet.memory import read_memory; m = read_memory(); print(m.total, m.source)",
        ).stdout.split()  # fmt: skip
        assert cgroup == [str(LIMIT_BYTES), "cgroup"], cgroup
        assert memory["source"] == "cgroup", memory
        assert memory["total_gb"] == 0.25, memory
        assert slots_of(doc, "A") == expected_slots, doc["slotsByJobTypeAndModel"]
        # recommended_parallel: the slots, and no more than fit in what the container has available
        # now (available_gb is rounded to the MB: both ends of that rounding are allowed).
        fits = [int((memory["available_gb"] + d) * 2**20) // MEMORY_KB for d in (-0.0005, 0.0005)]
        assert min(expected_slots, fits[0]) <= memory["recommended_parallel"] <= min(expected_slots, fits[1])
        assert memory["recommended_parallel"] > 0, memory
        assert host_slots > expected_slots  # the host's memory would have allowed more

        before = limiter_status(policies.pods("mem")[0])
        record.step(f"kubectl exec {pod.name}: allocate {2 * LIMIT_BYTES >> 20} MiB in the container")
        started = time.time()
        hog = policies.kubectl("exec", pod.name, "-c", "limiter", "--", "python3", "-c", HOG, check=False)
        record.event("hog.exited", returncode=hog.returncode, stderr=hog.stderr[-300:])

        def restarted() -> dict[str, Any] | None:
            pods = policies.pods("mem")
            if len(pods) != 1:
                return None
            status = limiter_status(pods[0])
            return status if status.get("restartCount", 0) > before.get("restartCount", 0) else None

        status = watch.wait("the limiter container restarted", restarted, timeout=60, interval=0.25)
        restarted_at = time.time()
        terminated = (status.get("lastState") or {}).get("terminated") or {}
        record.event("container.terminated", **{k: terminated.get(k) for k in ("reason", "exitCode")})

        def rejoined() -> Any:
            # The same pod, Ready again, reporting one instance from a poll after the restart, its
            # instance heartbeating in Redis (the id is the pod's name: it registers under it again).
            found = one_ready()
            if found is None or found.name != pod.name:
                return None
            age = watch.heartbeat_ages().get(pod.name)
            view = watch.views().get(pod.name)
            fresh = view is not None and view.t > restarted_at and view.count == 1
            return found if age is not None and age < 2 and fresh else None

        again = watch.wait("the restarted limiter registered and ready", rejoined, timeout=90)
        rejoined_at = time.time()
        job = watch.jobs().submit(again, "A", hold=0.2).result(30)
        memory_after = get_json(e2e.access.url(policies.pods("mem")[0]) + "/queue/memory")

    assert hog.returncode != 0, "the process in the container was never stopped by the OOM kill"
    assert terminated.get("reason") == "OOMKilled" and terminated.get("exitCode") == 137, terminated
    assert job.state == "completed", job.error
    assert memory_after["source"] == "cgroup" and memory_after["total_gb"] == 0.25, memory_after
    record.figure("cgroup_limit_bytes", LIMIT_BYTES)
    record.figure("host_memory_bytes", host_memory_bytes())
    record.figure("slots_in_pod", expected_slots)
    record.figure("slots_the_host_memory_would_give", host_slots)
    record.figure("recommended_parallel", memory["recommended_parallel"])
    record.figure("oom_to_restarted_s", round(restarted_at - started, 3))
    record.figure(
        "oom_to_rejoined_s", round(rejoined_at - started, 3),
        headline=f"/queue/memory {memory['total_gb']} GB (cgroup), {expected_slots} slots (host memory: "
        f"{host_slots}); OOMKilled, rejoined {rejoined_at - started:.1f} s after",
    )  # fmt: skip
