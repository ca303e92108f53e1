"""Settings of a limiter instance (``fleet-limiter serve``), read in one place.

Every field can come from the command line or from an environment variable (for pods), named
in the field's doc. Command-line values win over the environment.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from limiter.core.env import EnvReader

ENV_PREFIX = "FLEET_LIMITER_"


def default_instance_id() -> str:
    """The pod name where Kubernetes gives one, else host name, process id and a random suffix."""
    pod = os.environ.get("POD_NAME")
    if pod:
        return pod
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def pod_listen_address(pod_ip: str) -> str:
    """Where a limiter in a pod with address ``pod_ip`` listens (see :attr:`ServeSettings.host`)."""
    try:
        address = ipaddress.ip_address(pod_ip)
    except ValueError:
        return pod_ip  # not an address: let binding it say what is wrong
    if address.is_loopback:
        return pod_ip
    return "::" if address.version == 6 else "0.0.0.0"


@dataclass(slots=True)
class ServeSettings:
    """How one limiter instance runs."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis URL (``--redis``, ``FLEET_LIMITER_REDIS_URL``)."""
    policy_file: str | None = None
    """Policy file (``--policy``, ``FLEET_LIMITER_POLICY_FILE``). Without one, the policy projected
    into Redis by the operator for ``namespace/name`` is used, and new generations apply live."""
    namespace: str | None = None
    """Policy namespace (``--namespace``, ``FLEET_LIMITER_POLICY_NAMESPACE``); default: the file's
    ``metadata.namespace``, else ``default``."""
    name: str | None = None
    """Policy name (``--name``, ``FLEET_LIMITER_POLICY_NAME``); default: the file's
    ``metadata.name``."""
    host: str = "127.0.0.1"
    """Address to listen on (``--host``, ``FLEET_LIMITER_HOST``). In a pod (``POD_IP`` set, no
    ``FLEET_LIMITER_HOST``): every address of the pod (``0.0.0.0``, or ``::`` for an IPv6 pod), so
    ``kubectl port-forward``, which dials localhost inside the pod, reaches it too; but the pod's own
    address only where ``POD_IP`` is a loopback address (pods that share the host's network, as on
    the local control plane, where each pod has its own 127.x address)."""
    advertise_host: str | None = None
    """The address other tools (``fleet-limiter top``) reach this instance at, published in Redis;
    default ``host`` (in a pod, ``POD_IP``)."""
    port: int = 8080
    """Port (``--port``, ``FLEET_LIMITER_PORT``)."""
    instance_id: str = field(default_factory=default_instance_id)
    """This instance's id in the fleet (``FLEET_LIMITER_INSTANCE_ID``; default ``POD_NAME``)."""
    admin_token: str | None = None
    """Token for admin endpoints (``--admin-token``, ``FLEET_LIMITER_ADMIN_TOKEN``)."""
    shutdown_grace_seconds: float = 25.0
    """On SIGTERM, how long in-flight leases may run on before they are handed back, in seconds
    (``FLEET_LIMITER_SHUTDOWN_GRACE_SECONDS``). Keep it below the pod's
    terminationGracePeriodSeconds."""
    memory_budget_kb: int | None = None
    """Local memory budget override in KiB (``FLEET_LIMITER_MEMORY_BUDGET_KB``); default: the
    policy's ``memoryBudgetMB``, else 80% of the container's memory limit where job types declare
    memory estimates."""
    idle_timeout_seconds: float = 30.0
    """A client connection with no request in progress is closed after this long, in seconds
    (``FLEET_LIMITER_IDLE_TIMEOUT_SECONDS``): idle keep-alive connections, and connections that
    never finish sending a request's headers."""
    body_timeout_seconds: float = 30.0
    """A request's body must arrive within this long, in seconds, or the answer is 408
    (``FLEET_LIMITER_BODY_TIMEOUT_SECONDS``)."""
    policy_wait_seconds: float = 0.0
    """Without a policy file: how long to wait at start for the operator's projection, in seconds
    (``FLEET_LIMITER_POLICY_WAIT_SECONDS``; 0 waits forever, unready meanwhile)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ServeSettings:
        """Settings from ``FLEET_LIMITER_*`` variables, then ``overrides`` (non-None values win)."""
        read = EnvReader(os.environ if env is None else env, ENV_PREFIX)
        s = cls()
        for attr, var in {
            "redis_url": "REDIS_URL",
            "policy_file": "POLICY_FILE",
            "namespace": "POLICY_NAMESPACE",
            "name": "POLICY_NAME",
            "host": "HOST",
            "instance_id": "INSTANCE_ID",
            "admin_token": "ADMIN_TOKEN",
        }.items():
            if (raw := read.text(var)) is not None:
                setattr(s, attr, raw)
        if read.text("HOST") is None and (pod_ip := read.env.get("POD_IP")):
            s.host, s.advertise_host = pod_listen_address(pod_ip), pod_ip
        for attr, var in (("port", "PORT"), ("memory_budget_kb", "MEMORY_BUDGET_KB")):
            if (number := read.integer(var)) is not None:
                setattr(s, attr, number)
        for attr, var in (
            ("shutdown_grace_seconds", "SHUTDOWN_GRACE_SECONDS"),
            ("policy_wait_seconds", "POLICY_WAIT_SECONDS"),
            ("idle_timeout_seconds", "IDLE_TIMEOUT_SECONDS"),
            ("body_timeout_seconds", "BODY_TIMEOUT_SECONDS"),
        ):
            if (seconds := read.number(var)) is not None:
                setattr(s, attr, seconds)
        for attr, value in overrides.items():
            if value is not None:
                setattr(s, attr, value)
        if not 0 < s.port < 65536:
            raise ValueError(f"port: {s.port} is not valid: 1 to 65535")
        return s
