"""The local node: registered, Ready, schedulable, with a Lease that is renewed."""

from __future__ import annotations

import json

import pytest

from tests.cluster.conftest import Cluster

pytestmark = pytest.mark.cluster


def test_kubectl_get_nodes_shows_the_node_ready(cluster: Cluster) -> None:
    table = cluster.kubectl("get", "nodes")
    assert "local-node" in table and " Ready " in table, table

    node = json.loads(cluster.kubectl("get", "node", "local-node", "-o", "json"))
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert not any(t["key"].startswith("node.kubernetes.io/") for t in node["spec"].get("taints") or [])
    assert int(node["status"]["allocatable"]["pods"]) > 0


def test_the_node_lease_is_held_and_the_version_is_stamped(cluster: Cluster) -> None:
    lease = json.loads(cluster.kubectl("get", "lease", "local-node", "-n", "kube-node-lease", "-o", "json"))
    assert lease["spec"]["holderIdentity"] == "local-node"
    assert lease["spec"]["renewTime"]

    version = json.loads(cluster.kubectl("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    assert version["serverVersion"]["gitVersion"] != "v0.0.0"
    assert version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"]
