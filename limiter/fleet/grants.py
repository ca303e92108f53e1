"""An instance's share of the fleet's window budgets: grants drawn from Redis, spent locally.

The pure :class:`~limiter.core.budgets.BudgetLedger` (granted mode) counts what the instance holds; this
adapter keeps it supplied. When waiting work runs short on a model, it draws a grant (what the
work needs plus a prefetch) with one atomic script; on every heartbeat it hands back what the
instance did not spend, keeping what it spent in the last interval (what it likely needs next);
it charges overage to the fleet's counters; and after Redis lost its data it charges back what the
instance holds, so the counters again include every grant already taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from limiter.core.admission import JobTypeManager
from limiter.core.budgets import BudgetLedger, Reservation, Settlement
from limiter.core.clock import Clock
from limiter.core.policy import WINDOW_LIMITS, PolicySpec
from limiter.core.windows import BudgetAsk, BudgetGrant
from limiter.redis.fleetstore import RedisStore
from limiter.redis.plumbing import StoreUnavailable

T = TypeVar("T")

#: After a pull, how long to let the others hand their grants back before drawing again, in seconds.
PULL_ANSWER_SECONDS = 0.02
#: A draw asks for this share of the instance's fair share of a window beyond what it needs now,
#: so the next jobs fit locally without a round trip. Unused grant goes back every heartbeat.
PREFETCH_SHARE = 4


class GrantKeeper:
    """Keeps one instance's budget ledger supplied from the fleet's counters in Redis."""

    def __init__(
        self,
        spec: PolicySpec,
        store: RedisStore,
        clock: Clock,
        call: Callable[[Awaitable[Any]], Awaitable[Any]],
    ) -> None:
        """``call`` runs a store coroutine and records Redis's health (the instance's ``_call``)."""
        self.spec = spec
        self.store = store
        self.clock = clock
        self.call = call
        self.ledger = BudgetLedger(spec, mode="granted")
        self.manager: JobTypeManager | None = None
        self.instance_count = 1
        self.stopped = False
        self._draws: dict[str, asyncio.Task[None]] = {}
        self._recent: Counter[tuple[str, str]] = Counter()
        self._pending_charges: list[tuple[str, str, int]] = []
        self._next_pull: dict[str, float] = {}
        self.refused: dict[str, tuple[str, float]] = {}
        """model -> the window limit the fleet's last draw refused and when (this clock) it ends."""
        self.seen: dict[tuple[str, str], tuple[int, int]] = {}
        """(model, limit) -> (window id, what the fleet had left) at the last draw."""

    def update_policy(self, spec: PolicySpec) -> None:
        """A new policy generation: limits change at once, what is held in the windows is kept."""
        self.spec = spec
        self.ledger.update_policy(spec)

    # -- drawing ------------------------------------------------------------------------------------

    def after_dispatch(self) -> None:
        """Start a draw for every model whose window budget blocks waiting work."""
        if self.manager is None or self.stopped:
            return
        for shortfall in self.manager.shortfalls():
            task = self._draws.get(shortfall.model)
            if task is None or task.done():
                self._draws[shortfall.model] = asyncio.get_running_loop().create_task(
                    self._draw_loop(shortfall.model), name=f"draw:{shortfall.model}"
                )

    def _needs(self, model: str) -> dict[str, int]:
        assert self.manager is not None
        needs: dict[str, int] = {}
        for s in self.manager.shortfalls():
            if s.model == model:
                for dim, n in s.needs.items():
                    needs[dim] = max(needs.get(dim, 0), n)
        return needs

    async def _draw_loop(self, model: str) -> None:
        assert self.manager is not None
        while not self.stopped:
            needs = self._needs(model)
            if not needs:
                return
            limits = self.spec.model(model).limits.as_dict()
            asks = []
            for dim, need in needs.items():
                limit = limits[dim]
                need = min(need, limit)
                prefetch = math.ceil(limit / self.instance_count / PREFETCH_SHARE)
                asks.append(BudgetAsk(dim, limit, need, min(limit, need + prefetch)))
            heartbeat = self.spec.instance.heartbeat_seconds
            try:
                grant = await self.call(self.store.draw(model, asks))
            except StoreUnavailable:
                await asyncio.sleep(heartbeat)
                continue
            self._note_draw(model, asks, grant)
            if grant.ok:
                now = self.clock.now()
                stale = [
                    (d.dimension, d.window_id, d.granted)
                    for d in grant.dimensions
                    if not self.ledger.add_grant(model, d.dimension, d.window_id, d.granted, now)
                ]
                if stale:
                    # Redis's clock is still in a window this instance has left: hand the grant
                    # back (nothing is lost) and try again once Redis has moved on too.
                    with contextlib.suppress(StoreUnavailable):
                        await self.call(self.store.give_back(model, stale))
                    await asyncio.sleep(0.01)
                self.manager.dispatch()
                continue
            if grant.fenced:  # Redis lost its data: the counters are rebuilt until the fence ends
                await asyncio.sleep(min(grant.retry_after_ms / 1000, heartbeat) + 0.01)
                self.manager.dispatch()
                continue
            # The fleet's window is spent in Redis, but other instances may hold unspent grants of
            # it: pull them back now (at once the first time, then at most once per heartbeat, when
            # they would hand them back anyway) and draw again; the window ends at retry_after.
            now = asyncio.get_running_loop().time()
            if now >= self._next_pull.get(model, 0.0):
                self._next_pull[model] = now + heartbeat
                with contextlib.suppress(StoreUnavailable):
                    await self.call(self.store.pull(model))
                await asyncio.sleep(PULL_ANSWER_SECONDS)
            else:
                await asyncio.sleep(min(grant.retry_after_ms / 1000, heartbeat) + 0.01)
            self.manager.dispatch()

    def _note_draw(self, model: str, asks: list[BudgetAsk], grant: BudgetGrant) -> None:
        """Keep what the fleet said: what it has left per window, and which window refused."""
        now = self.clock.now()
        ends = []
        for ask, d in zip(asks, grant.dimensions, strict=True):
            self.seen[(model, d.dimension)] = (d.window_id, d.remaining)
            if not grant.ok and d.remaining < ask.need:
                ends.append((d.window_ends_in_ms, d.dimension))
        if grant.ok:
            self.refused.pop(model, None)
        elif ends:
            ms, limit = max(ends)
            self.refused[model] = (limit, now + ms / 1000)

    def refused_window(self, model: str) -> tuple[str, float] | None:
        """The window limit the fleet last refused ``model`` on and the seconds until it ends, or
        None (not refused, or that window has ended)."""
        hit = self.refused.get(model)
        if hit is None:
            return None
        left = hit[1] - self.clock.now()
        return (hit[0], left) if left > 0 else None

    # -- spending -------------------------------------------------------------------------------------

    def note_reserved(self, reservation: Reservation) -> None:
        """A lease started: what it reserved counts as recent spending (kept at the next heartbeat)."""
        for limit in reservation.windows:
            self._recent[(reservation.model, limit)] += reservation.amounts.get(WINDOW_LIMITS[limit][0], 0)

    def settle(self, reservation: Reservation, actual: Mapping[str, int]) -> Settlement:
        """A lease ended: refund or charge locally; overage beyond the grant is charged to the fleet."""
        settlement = self.ledger.settle(reservation, dict(actual), self.clock.now())
        for dim, amount in settlement.over_grant.items():
            self._pending_charges.append((reservation.model, dim, amount))
        return settlement

    @property
    def charges_pending(self) -> bool:
        return bool(self._pending_charges or self.ledger.forced)

    # -- heartbeat work ---------------------------------------------------------------------------------

    async def give_back(self, keep_recent: bool) -> None:
        """Hand back what the instance holds but did not spend (all of it unless ``keep_recent``)."""
        keep: dict[str, dict[str, int]] = {}
        if keep_recent:
            for (model, dim), amount in self._recent.items():
                keep.setdefault(model, {})[dim] = amount
        self._recent.clear()
        by_model: dict[str, list[tuple[str, int, int]]] = {}
        for model, dim, window, amount in self.ledger.take_surplus(self.clock.now(), keep):
            by_model.setdefault(model, []).append((dim, window, amount))
        for model, refunds in by_model.items():
            await self.call(self.store.give_back(model, refunds))

    async def give_back_model(self, model: str) -> None:
        """Another instance pulled ``model``: hand back every unspent grant of it at once, keeping
        only what this instance's own waiting work needs."""
        if self.stopped or model not in self.ledger.counters:
            return
        keep = {model: self._needs(model)} if self.manager is not None else {}
        refunds = [
            (dim, window, amount)
            for m, dim, window, amount in self.ledger.take_surplus(self.clock.now(), keep, only=model)
        ]
        if refunds:
            with contextlib.suppress(StoreUnavailable):
                await self.call(self.store.give_back(model, refunds))

    async def charge_pending(self) -> None:
        """Charge overage (and reconciliation) not yet written to Redis; kept on failure."""
        self._pending_charges += self.ledger.forced  # shadow admissions beyond the grant
        self.ledger.forced = []
        pending, self._pending_charges = self._pending_charges, []
        by_model: dict[str, list[tuple[str, int]]] = {}
        for model, dim, amount in pending:
            by_model.setdefault(model, []).append((dim, amount))
        for model, charges in by_model.items():
            try:
                await self.call(self.store.charge(model, charges))
            except StoreUnavailable:
                self._pending_charges += [(model, d, a) for d, a in charges]

    async def recharge(self) -> None:
        """After Redis lost its data: charge back every grant this instance holds in the current windows."""
        for model, per in self.ledger.snapshot(self.clock.now()).items():
            for limit, row in per.items():
                if row["capacity"] > 0:
                    self._pending_charges.append((model, limit, row["capacity"]))
        await self.charge_pending()

    async def stop(self) -> None:
        """Stop drawing and hand back everything unspent."""
        self.stopped = True
        for task in self._draws.values():
            task.cancel()
        for task in self._draws.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(StoreUnavailable):
            await self.give_back(keep_recent=False)
