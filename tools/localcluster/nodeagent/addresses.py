"""Pod addresses: each pod gets its own loopback address (127.10.x.y), so pods can bind the same port.

Linux routes all of 127.0.0.0/8 to the loopback interface, so any such address can be bound with no
network setup. Addresses are handed out round-robin so a freed one is not reused at once (a new pod
would otherwise meet the old one's sockets in TIME_WAIT, or stale endpoints).
"""

from __future__ import annotations

import ipaddress


class AddressPool:
    def __init__(self, network: str = "127.10.0.0/16") -> None:
        net = ipaddress.ip_network(network)
        # skip .0 and .255 in the last octet: they look like network/broadcast addresses to people
        self._all = [str(a) for a in net.hosts() if a.packed[-1] not in (0, 255)]
        self._used: dict[str, str] = {}
        self._next = 0

    def allocate(self, owner: str) -> str:
        for _ in range(len(self._all)):
            addr = self._all[self._next]
            self._next = (self._next + 1) % len(self._all)
            if addr not in self._used:
                self._used[addr] = owner
                return addr
        raise RuntimeError("no free pod address left in the loopback pool")

    def free(self, addr: str | None) -> None:
        if addr:
            self._used.pop(addr, None)

    def in_use(self) -> dict[str, str]:
        return dict(self._used)
