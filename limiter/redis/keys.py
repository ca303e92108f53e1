"""Every Redis key and channel name of a policy, built in one place.

All keys of one policy carry the hash tag ``{namespace/name}``, so they live in one Redis Cluster
slot and every script can touch all of them atomically::

    fl:{team-a/chat}:policy                       hash   spec (JSON), generation, poolParams (JSON)
    fl:{team-a/chat}:instances                    zset   instance id -> last heartbeat, ms of Redis TIME
    fl:{team-a/chat}:instance-info                hash   instance id -> JSON the instance registered with
    fl:{team-a/chat}:allocation                   string the allocation record (JSON)
    fl:{team-a/chat}:leases                       hash   instance id -> its last lease report (JSON)
    fl:{team-a/chat}:ghosts                       hash   id#incarnation -> a vanished instance's lease report
    fl:{team-a/chat}:budget-keys                  set    every budget key ever written (for delete_policy)
    fl:{team-a/chat}:budget:<limit>:<model>       hash   {window, used}: one fleet window budget
    fl:{team-a/chat}:budget-fence                 string (PX) while budgets are rebuilt after data loss
    fl:{team-a/chat}:shadow                       hash   reason -> shadow admissions enforcing would refuse
    fl:{team-a/chat}:changes                      pub/sub channel of allocation records
    fl:{team-a/chat}:pulls                        pub/sub channel of pulls (a model's name)
    fl:{team-a/chat}:credit-keys                  set    key ids of every credit budget (for delete_all)
    fl:{team-a/chat}:credits:<key id>             hash   one API key's credit budget (creditstore.py)
    fl:{team-a/chat}:credits:<key id>:deadlines   zset   reservation id -> deadline, ms of Redis TIME
    fl:{team-a/chat}:credits:<key id>:reserved    hash   reservation id -> credits it holds
    fl:{team-a/chat}:credits:<key id>:req:<id>    string an idempotent answer, expiring (PX)

The model name goes last in budget keys: limit names hold no ``:``, so a model called
``a:tokensPerDay`` can never collide with another model's key. Braces in a model name are harmless
because Redis hashes the *first* ``{...}`` of a key, which is always the policy's tag.

API keys never appear in key names: a credit budget is named by its *key id*, the SHA-256 of the
API key in hex (:func:`credit_key_id`), so neither ``KEYS``/``MONITOR`` output nor a log line that
names a Redis key gives a usable key away. Request ids are hashed the same way, which also keeps
whatever a client sends out of key names.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from limiter.core.policy import WINDOW_LIMITS

PREFIX = "fl"

# Kubernetes names (RFC 1123 labels and subdomains) fit; anything else that could break the hash tag
# (braces) or make two tags equal ("a/b" + "c" vs "a" + "b/c") is refused.
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def credit_key_id(api_key: str) -> str:
    """The id of an API key in Redis key names: SHA-256 of its UTF-8 bytes, 64 hex digits."""
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CreditKeys:
    """The keys of one API key's credit budget; build it with :meth:`PolicyKeys.credits`."""

    budget: str
    """Hash: the balance, its configuration and lifetime totals (see limiter/redis/lua/credits_lib.lua)."""
    deadlines: str
    """Sorted set: open reservation id -> its deadline, ms of Redis TIME."""
    reserved: str
    """Hash: open reservation id -> the credits it holds."""
    request_prefix: str
    """Prefix of the idempotency keys; :meth:`request` appends the hashed request id."""

    def request(self, scope: str, request_id: str) -> str:
        """String: the remembered answer to request ``request_id`` of kind ``scope`` (``consume``,
        ``reserve``, ``settle``), expiring. Scopes keep a consume and a reserve that reuse one id
        apart."""
        # 128 bits are plenty to tell request ids apart, and every remembered answer is a key.
        digest = hashlib.sha256(f"{scope}\0{request_id}".encode()).hexdigest()[:32]
        return f"{self.request_prefix}{digest}"

    @property
    def script_keys(self) -> list[str]:
        """KEYS[1..3] of every credits script, in the order the scripts expect."""
        return [self.budget, self.deadlines, self.reserved]


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
    def lease_reports(self) -> str:
        """Hash: live instance id -> the lease report of its last heartbeat (JSON; absent when it
        holds no lease)."""
        return self._key("leases")

    @property
    def ghosts(self) -> str:
        """Hash: ``<instance id>#<incarnation>`` -> the last lease report of an instance that left
        with leases in flight, counted against the fleet until its ``untilMs`` (ms of Redis TIME)."""
        return self._key("ghosts")

    @property
    def budget_registry(self) -> str:
        """Set of every budget key the scripts have written, so the policy can be deleted whole."""
        return self._key("budget-keys")

    @property
    def budget_fence(self) -> str:
        """String, expiring (PX): while it exists, draws take nothing. Set by the first draw that
        finds Redis has lost its data since the caller last looked (docs/fleet.md, "Redis lost its
        data"), so every instance has charged back what it drew of the current windows before
        anyone draws again."""
        return self._key("budget-fence")

    def budget(self, model: str, limit: str) -> str:
        """Hash ``{window, used}``: the fleet's window budget of ``limit`` on ``model``."""
        if limit not in WINDOW_LIMITS:
            raise ValueError(
                f"limit: {limit!r} is not a window limit; expected one of {', '.join(WINDOW_LIMITS)}"
            )
        return self._key("budget", limit, model)

    @property
    def shadow(self) -> str:
        """Hash: refusal reason code -> admissions in shadow mode that enforcing would have refused,
        summed over the fleet (the operator's ``status.shadow.wouldRefuse``)."""
        return self._key("shadow")

    @property
    def credit_registry(self) -> str:
        """Set of the key ids of every credit budget written, so they can be deleted whole."""
        return self._key("credit-keys")

    def credits(self, key_id: str) -> CreditKeys:
        """The keys of the credit budget of the API key whose id (:func:`credit_key_id`) is ``key_id``.

        Takes the id, not the API key, so a raw key never reaches this module's callers' logs by
        accident; a value that is not 64 lowercase hex digits is refused.
        """
        if not _HEX64.match(key_id):
            raise ValueError("key_id: expected the SHA-256 of the API key in 64 lowercase hex digits")
        base = self._key("credits", key_id)
        return CreditKeys(
            budget=base,
            deadlines=f"{base}:deadlines",
            reserved=f"{base}:reserved",
            request_prefix=f"{base}:req:",
        )

    @property
    def channel(self) -> str:
        """Pub/sub channel on which every allocation change is published once."""
        return self._key("changes")

    @property
    def pull_channel(self) -> str:
        """Pub/sub channel of pulls: an instance whose window grant is spent asks the others to hand
        their unspent grants back (the message is the model's name)."""
        return self._key("pulls")

    @property
    def membership_keys(self) -> list[str]:
        """KEYS of the membership and projection scripts, in the order the scripts expect."""
        return [
            self.instances,
            self.instance_info,
            self.allocation,
            self.policy,
            self.lease_reports,
            self.ghosts,
        ]

    @property
    def fixed_keys(self) -> list[str]:
        """Every key of the policy whose name does not depend on a model."""
        return [
            self.policy,
            self.instances,
            self.instance_info,
            self.allocation,
            self.lease_reports,
            self.ghosts,
            self.budget_registry,
            self.budget_fence,
            self.shadow,
        ]
