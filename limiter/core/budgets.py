"""Window budgets (SPEC section 3): pure, with the time handed in.

Minute and day limits are fixed windows aligned to UTC minutes and days. A job reserves its
estimate when it starts; when it ends it settles its actual usage: the difference is refunded
if the reservation's window is still current, and overage is charged to the current window.
When a window's budget is spent, work waits for the next window; nothing fails.

A :class:`BudgetLedger` keeps one counter per limited dimension of each model. It runs in one
of two modes:

* ``local``: the counter's capacity is the model's full limit (one process, or tests);
* ``granted``: the capacity is what this instance has drawn from the fleet's counter in Redis.
  A reservation that does not fit reports a :class:`Shortfall`; the adapter draws that much
  (plus some prefetch) with one atomic script and adds it with :meth:`BudgetLedger.add_grant`.
  Unused grant is handed back with :meth:`BudgetLedger.take_surplus` on every heartbeat, so an
  idle instance's share flows to busy ones within one interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from limiter.core.policy import WINDOW_LIMITS, ModelSpec, PolicySpec

Mode = Literal["local", "granted"]


def window_id(now: float, seconds: int) -> int:
    """The number of the window that contains ``now`` (UTC-aligned: epoch seconds have no leap seconds)."""
    return math.floor(now / seconds)


def window_end(now: float, seconds: int) -> float:
    """When the window that contains ``now`` ends."""
    return float((window_id(now, seconds) + 1) * seconds)


def usage_bounds(model: ModelSpec) -> dict[str, tuple[str, int]]:
    """Per dimension (tokens, requests): the smallest window limit of ``model`` on it, with its name.

    One job can never be granted more than that (a reservation above it could never fit a window),
    so a reported usage above it is an error of the reporter, not usage: charging it would fill a
    window with overage and block the model until the window ends (a whole UTC day for a daily
    limit). Below the bound, overage is charged in full.
    """
    limits = model.limits.as_dict()
    bounds: dict[str, tuple[str, int]] = {}
    for name, (dimension, _) in WINDOW_LIMITS.items():
        if name in limits and (dimension not in bounds or limits[name] < bounds[dimension][1]):
            bounds[dimension] = (name, limits[name])
    return bounds


def usage_problems(model: ModelSpec, amounts: Mapping[str, int], field: str = "actual") -> list[str]:
    """Why ``amounts`` (a reported usage, or an ``estimate``) exceed what one job can use on
    ``model`` (empty: they do not); see :func:`usage_bounds`."""
    problems = []
    for dimension, (name, bound) in usage_bounds(model).items():
        value = amounts.get(dimension)
        if value is not None and value > bound:
            problems.append(
                f"{field}.{dimension}: {value} is not valid: above what one job can use on model "
                f"'{model.name}' ({name} is {bound}); at most {bound}"
            )
    return problems


def clamp_usage(model: ModelSpec, actual: Mapping[str, int]) -> dict[str, int]:
    """``actual`` with every dimension capped at its bound (for usage read from an upstream's answer)."""
    bounds = usage_bounds(model)
    return {k: min(v, bounds[k][1]) if k in bounds else v for k, v in actual.items()}


@dataclass(slots=True)
class WindowCounter:
    """One limited dimension of one model: usage against capacity in the current window."""

    limit_name: str
    field: str
    """The estimate field it counts: ``tokens`` or ``requests``."""
    seconds: int
    limit: int
    capacity: int = 0
    used: int = 0
    window: int = -1

    def roll(self, now: float, mode: Mode) -> None:
        """Start a new window when ``now`` has left the current one (never go back to an older one:
        a grant may have moved the counter ahead of this clock, see :meth:`BudgetLedger.add_grant`)."""
        self.advance(window_id(now, self.seconds), mode)

    def advance(self, window: int, mode: Mode) -> None:
        """Move to ``window`` if it is newer than the current one."""
        if window > self.window:
            self.window = window
            self.used = 0
            self.capacity = self.limit if mode == "local" else 0

    @property
    def headroom(self) -> int:
        return self.capacity - self.used


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a started job holds: per dimension, the amount and the window it was taken from."""

    model: str
    amounts: dict[str, int]
    """Estimate field -> amount reserved (``tokens``, ``requests``)."""
    windows: dict[str, int]
    """Limit name -> window id at reservation time."""


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A reservation that did not fit: per limit name, how much more grant it needs."""

    model: str
    needs: dict[str, int]
    retry_at: float
    """When a local-mode counter's blocking window ends (in granted mode, after a draw)."""


@dataclass(frozen=True, slots=True)
class Settlement:
    """The effect of settling a job: per limit name, what was refunded and what was charged."""

    refunded: dict[str, int] = field(default_factory=dict)
    charged: dict[str, int] = field(default_factory=dict)
    over_grant: dict[str, int] = field(default_factory=dict)
    """Granted mode: overage beyond what this instance holds, to be charged to the fleet counter."""


class BudgetLedger:
    """The window budgets of every model of a policy, for one instance."""

    def __init__(self, spec: PolicySpec, mode: Mode = "local") -> None:
        self.mode: Mode = mode
        self.counters: dict[str, dict[str, WindowCounter]] = {}
        self.forced: list[tuple[str, str, int]] = []
        """Granted mode: (model, limit, amount) reserved beyond the grant by :meth:`force_reserve`,
        to be charged to the fleet's counters (taken by the adapter)."""
        self.update_policy(spec)

    def update_policy(self, spec: PolicySpec) -> None:
        """Apply a new policy: limits change at once, usage in the current windows is kept."""
        counters: dict[str, dict[str, WindowCounter]] = {}
        for model in spec.models:
            limits = model.limits.as_dict()
            per: dict[str, WindowCounter] = {}
            for name, (fld, seconds) in WINDOW_LIMITS.items():
                if name not in limits:
                    continue
                old = self.counters.get(model.name, {}).get(name)
                c = WindowCounter(name, fld, seconds, limits[name])
                if old is not None:
                    c.used, c.window = old.used, old.window
                    c.capacity = c.limit if self.mode == "local" else old.capacity
                per[name] = c
            counters[model.name] = per
        self.counters = counters

    def limited(self, model: str) -> bool:
        """Whether ``model`` has any window limit."""
        return bool(self.counters.get(model))

    def try_reserve(self, model: str, amounts: Mapping[str, int], now: float) -> Reservation | Shortfall:
        """Reserve ``amounts`` (estimate field -> amount) in every window of ``model``, or nothing."""
        counters = self.counters.get(model, {})
        needs: dict[str, int] = {}
        retry_at = math.inf
        for c in counters.values():
            c.roll(now, self.mode)
            want = amounts.get(c.field, 0)
            if want > c.headroom:
                needs[c.limit_name] = want - max(c.headroom, 0)
                retry_at = min(retry_at, window_end(now, c.seconds))
        if needs:
            return Shortfall(model, needs, retry_at)
        for c in counters.values():
            c.used += amounts.get(c.field, 0)
        return Reservation(
            model,
            {c.field: amounts.get(c.field, 0) for c in counters.values()},
            {c.limit_name: c.window for c in counters.values()},
        )

    def force_reserve(self, model: str, amounts: Mapping[str, int], now: float) -> Reservation:
        """Shadow mode: reserve ``amounts`` in every window of ``model`` even beyond the headroom.
        In granted mode what exceeds the grant is added to it and noted in :attr:`forced`, so the
        fleet's counters are charged what was really used."""
        counters = self.counters.get(model, {})
        for c in counters.values():
            c.roll(now, self.mode)
            want = amounts.get(c.field, 0)
            beyond = max(0, c.used + want - c.capacity) if self.mode == "granted" else 0
            if beyond:
                c.capacity += beyond
                self.forced.append((model, c.limit_name, beyond))
            c.used += want
        return Reservation(
            model,
            {c.field: amounts.get(c.field, 0) for c in counters.values()},
            {c.limit_name: c.window for c in counters.values()},
        )

    def settle(self, reservation: Reservation, actual: Mapping[str, int], now: float) -> Settlement:
        """Settle a finished job: refund unused estimate in the same window, charge overage now."""
        refunded: dict[str, int] = {}
        charged: dict[str, int] = {}
        over_grant: dict[str, int] = {}
        for c in self.counters.get(reservation.model, {}).values():
            if c.limit_name not in reservation.windows:
                continue  # the limit was added by a policy update after the job started
            c.roll(now, self.mode)
            reserved = reservation.amounts.get(c.field, 0)
            used = actual.get(c.field, reserved)
            diff = used - reserved
            if diff < 0 and reservation.windows[c.limit_name] == c.window:
                c.used = max(0, c.used + diff)
                refunded[c.limit_name] = -diff
            elif diff > 0:
                beyond = max(0, c.used + diff - c.capacity) if self.mode == "granted" else 0
                c.used += diff
                charged[c.limit_name] = diff
                if beyond:
                    c.capacity += beyond  # charged to the fleet counter by the caller
                    over_grant[c.limit_name] = beyond
        return Settlement(refunded, charged, over_grant)

    # -- granted mode ----------------------------------------------------------------------------

    def add_grant(self, model: str, limit_name: str, window: int, amount: int, now: float) -> bool:
        """Add what the fleet counter granted for ``window``; False (nothing added) when this ledger
        is already in a later window.

        Redis's clock decides windows: a grant for a newer window than this clock says moves the
        counter to it at once (the instance's clock is a few ms behind Redis's at the boundary).
        """
        c = self.counters.get(model, {}).get(limit_name)
        if c is None:
            return False
        c.roll(now, self.mode)
        c.advance(window, self.mode)
        if window != c.window:
            return False
        c.capacity += amount
        return True

    def take_surplus(
        self, now: float, keep: Mapping[str, Mapping[str, int]] | None = None, only: str | None = None
    ) -> list[tuple[str, str, int, int]]:
        """Grant held but not used, to hand back to the fleet: (model, limit, window, amount) rows.

        ``keep`` (model -> limit -> amount) is headroom to hold on to for work already waiting;
        ``only``: just that model's.
        """
        out: list[tuple[str, str, int, int]] = []
        for model, per in self.counters.items():
            if only is not None and model != only:
                continue
            for c in per.values():
                c.roll(now, self.mode)
                spare = c.headroom - (keep or {}).get(model, {}).get(c.limit_name, 0)
                if self.mode == "granted" and spare > 0:
                    c.capacity -= spare
                    out.append((model, c.limit_name, c.window, spare))
        return out

    def snapshot(self, now: float) -> dict[str, dict[str, dict[str, int]]]:
        """model -> limit -> {window, capacity, used, remaining} for debugging and metrics."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for model, per in self.counters.items():
            out[model] = {}
            for c in per.values():
                c.roll(now, self.mode)
                out[model][c.limit_name] = {
                    "window": c.window,
                    "capacity": c.capacity,
                    "used": c.used,
                    "remaining": max(0, c.capacity - c.used),
                }
        return out
