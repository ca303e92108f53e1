"""The operator's side of Redis: one store per policy, what Redis holds, and putting a generation there.

A generation is projected only when Redis holds an older one (or none): the projection script
would refuse an equal or older generation anyway, but reading first means a resumed or restarted
operator sends no write at all. Every call may raise :class:`limiter.redis.fleetstore.StoreUnavailable`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from limiter.redis.fleetstore import RedisStore
from limiter.redis.plumbing import StoreUnavailable

from .status import RedisState

log = logging.getLogger("fleet_limiter.operator.redis")


class Stores:
    """The Redis stores of the policies the operator serves, by policy, reused across handler
    calls (each owns a small connection pool); a policy whose URL changes gets a new one."""

    def __init__(self) -> None:
        self._stores: dict[tuple[str, str], tuple[str, RedisStore]] = {}

    async def get(self, url: str, namespace: str, name: str) -> RedisStore:
        """The store of ``namespace/name`` on ``url``."""
        key = (namespace, name)
        cached = self._stores.get(key)
        if cached is not None and cached[0] == url:
            return cached[1]
        if cached is not None:
            await self.drop(namespace, name)
        store = RedisStore.from_url(url, namespace, name)
        self._stores[key] = (url, store)
        return store

    async def drop(self, namespace: str, name: str) -> None:
        """Close and forget the store of a policy (deleted, or moved to another Redis)."""
        cached = self._stores.pop((namespace, name), None)
        if cached is not None:
            with contextlib.suppress(Exception):  # closing a dead connection must not fail a handler
                await cached[1].close()

    async def close(self) -> None:
        """Close every store (operator shutdown)."""
        for namespace, name in list(self._stores):
            await self.drop(namespace, name)


async def sync(
    store: RedisStore, spec_json: dict[str, Any] | None, generation: int
) -> tuple[RedisState, bool]:
    """Read what Redis holds for the policy and, when ``spec_json`` (a valid spec) is given and
    Redis holds an older generation or none, project it as ``generation``.

    Returns the state after that and whether a projection was written.
    """
    stored = await store.load_policy()
    projected = False
    if spec_json is not None and (stored is None or stored[1] < generation):
        projected = await store.project_policy(spec_json, generation)
        if projected:
            log.info(
                "projected %s/%s generation %d into Redis at %s",
                store.keys.namespace,
                store.keys.name,
                generation,
                store.server,
            )
            stored = (spec_json, generation)
        else:  # someone projected a newer one meanwhile
            stored = await store.load_policy()
    allocation = await store.allocation()
    shadow = await store.shadow_counts()
    return RedisState(store.server, stored[1] if stored else None, allocation, shadow), projected


__all__ = ["StoreUnavailable", "Stores", "sync"]
