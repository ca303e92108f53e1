"""Where a limiter listens and what it publishes as its address (ServeSettings.from_env)."""

from __future__ import annotations

import pytest

from limiter.fleet.settings import ServeSettings, pod_listen_address


@pytest.mark.parametrize(
    ("pod_ip", "listen"),
    [
        ("10.244.1.7", "0.0.0.0"),  # a pod of its own network namespace (kind, any real cluster)
        ("fd00:10:244::7", "::"),
        ("127.10.0.3", "127.10.0.3"),  # pods that share the host's network (the local control plane)
        ("::1", "::1"),
    ],
)
def test_a_pod_listens_on_all_its_addresses_unless_it_shares_the_host_network(
    pod_ip: str, listen: str
) -> None:
    s = ServeSettings.from_env({"POD_IP": pod_ip})
    assert pod_listen_address(pod_ip) == s.host == listen
    # What `top` and the other instances are told stays the pod's own address.
    assert s.advertise_host == pod_ip


def test_an_explicit_host_wins_over_the_pod_address() -> None:
    s = ServeSettings.from_env({"POD_IP": "10.244.1.7", "FLEET_LIMITER_HOST": "10.244.1.7"})
    assert s.host == "10.244.1.7" and s.advertise_host is None


def test_outside_a_pod_nothing_changes() -> None:
    s = ServeSettings.from_env({})
    assert s.host == "127.0.0.1" and s.advertise_host is None
