"""The ``limits`` library (alisaifee/limits) as the library peer, in this process, on the benchmark's
Redis through its asyncio storage with the redis-py client (the one fleet-limiter uses).

Three "replicas" are three storages with their own connection pools and limiters, as three pods
importing the library would have. Two strategies: ``fixed-window`` (one INCR with EXPIRE per hit;
the window starts at a key's first hit, so a trial that fits in 60 s is one window) and
``moving-window`` (a Lua script over a list of timestamps: exact over any 60 s).
"""

from __future__ import annotations

from typing import Any

from bench.peers.install import import_limits

OPEN = "open"


class LimitsLibrary:
    """``decide`` is one ``hit`` on the replica's limiter; ``call`` one hit on the open key."""

    replicas = 3

    def __init__(self, redis_url: str, limit: int, strategy: str = "fixed-window") -> None:
        self.version = import_limits()
        from limits import RateLimitItemPerMinute
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

        cls = {"fixed-window": FixedWindowRateLimiter, "moving-window": MovingWindowRateLimiter}[strategy]
        self.strategy = strategy
        uri = redis_url.replace("redis://", "async+redis://", 1)
        self.storages = [RedisStorage(uri, implementation="redispy") for _ in range(self.replicas)]
        self.limiters: list[Any] = [cls(s) for s in self.storages]
        self.item = RateLimitItemPerMinute(limit)
        self.open_item = RateLimitItemPerMinute(10**9)

    async def __aenter__(self) -> LimitsLibrary:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for storage in self.storages:
            client: Any = getattr(storage.bridge, "storage", None)  # the redis-py client
            if client is not None:
                await client.aclose()

    def pids(self) -> list[int]:
        return []

    async def decide(self, replica: int, trial: str) -> bool:
        return bool(await self.limiters[replica].hit(self.item, self.strategy, trial))

    async def call(self) -> None:
        if not await self.limiters[0].hit(self.open_item, self.strategy, OPEN):
            raise RuntimeError("limits refused the open key")
