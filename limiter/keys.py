"""Every Redis key and channel name of a policy, built in one place.

All keys of one policy carry the hash tag ``{namespace/name}``, so they live in one Redis Cluster
slot and every script can touch all of them atomically::

    fl:{team-a/chat}:policy                       hash   spec (JSON), generation, poolParams (JSON)
    fl:{team-a/chat}:instances                    zset   instance id -> last heartbeat, ms of Redis TIME
    fl:{team-a/chat}:instance-info                hash   instance id -> JSON the instance registered with
    fl:{team-a/chat}:allocation                   string the allocation record (JSON)
    fl:{team-a/chat}:budget-keys                  set    every budget key ever written (for delete_policy)
    fl:{team-a/chat}:budget:<limit>:<model>       hash   {window, used}: one fleet window budget
    fl:{team-a/chat}:changes                      pub/sub channel of allocation records

The model name goes last in budget keys: limit names hold no ``:``, so a model called
``a:tokensPerDay`` can never collide with another model's key. Braces in a model name are harmless
because Redis hashes the *first* ``{...}`` of a key, which is always the policy's tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from limiter.policy import WINDOW_LIMITS

PREFIX = "fl"

# Kubernetes names (RFC 1123 labels and subdomains) fit; anything else that could break the hash tag
# (braces) or make two tags equal ("a/b" + "c" vs "a" + "b/c") is refused.
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class PolicyKeys:
    """The key family of one policy (namespace, name)."""

    namespace: str
    name: str

    def __post_init__(self) -> None:
        for field, value in (("namespace", self.namespace), ("name", self.name)):
            if not _NAME.match(value):
                raise ValueError(
                    f"policy {field}: {value!r} is not valid: use letters, digits, '.', '_' and '-' "
                    "(a Kubernetes name), starting and ending with a letter or digit"
                )

    @property
    def tag(self) -> str:
        """The hash tag shared by every key of the policy, braces included."""
        return f"{{{self.namespace}/{self.name}}}"

    def _key(self, *parts: str) -> str:
        return ":".join((PREFIX, self.tag, *parts))

    @property
    def policy(self) -> str:
        """Hash: ``spec`` (JSON), ``generation``, ``poolParams`` (JSON)."""
        return self._key("policy")

    @property
    def instances(self) -> str:
        """Sorted set: instance id scored by its last heartbeat (ms of Redis TIME)."""
        return self._key("instances")

    @property
    def instance_info(self) -> str:
        """Hash: instance id -> the JSON object the instance registered with."""
        return self._key("instance-info")

    @property
    def allocation(self) -> str:
        """String: the current allocation record (JSON)."""
        return self._key("allocation")

    @property
    def budget_registry(self) -> str:
        """Set of every budget key the scripts have written, so the policy can be deleted whole."""
        return self._key("budget-keys")

    def budget(self, model: str, limit: str) -> str:
        """Hash ``{window, used}``: the fleet's window budget of ``limit`` on ``model``."""
        if limit not in WINDOW_LIMITS:
            raise ValueError(
                f"limit: {limit!r} is not a window limit; expected one of {', '.join(WINDOW_LIMITS)}"
            )
        return self._key("budget", limit, model)

    @property
    def channel(self) -> str:
        """Pub/sub channel on which every allocation change is published once."""
        return self._key("changes")

    @property
    def membership_keys(self) -> list[str]:
        """KEYS of the membership and projection scripts, in the order the scripts expect."""
        return [self.instances, self.instance_info, self.allocation, self.policy]

    @property
    def fixed_keys(self) -> list[str]:
        """Every key of the policy whose name does not depend on a model."""
        return [self.policy, self.instances, self.instance_info, self.allocation, self.budget_registry]
