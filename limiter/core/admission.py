"""The job-type manager (SPEC section 5): pure, synchronous, with the clock injected.

It decides, on one instance, which waiting job runs next and on which model:

* A job of type j may run on model m when j has a free slot of its own there (its ``slots[j][m]``
  from the allocation), or, if j is flexible, when the flexible types of m together have a slot
  that no flexible owner with waiting work is entitled to. Fixed types neither lend nor borrow.
* Waiting jobs are served in arrival order (FIFO within a job type); a job allowed on several
  models takes the first model, in its order of preference, with a free slot.
* Owners come first: a slot is lent only where its owner has no waiting work that could use it,
  so a freed slot goes to its owner before a borrower. Nothing is ever preempted.
* Every acquire, release and allocation change dispatches at once; no timer is involved.
* When slots shrink below what is in flight, nothing is cancelled; new work waits.

The window budgets are consulted through a :class:`BudgetGate` when a job is placed, so a model
whose window is spent is skipped (and the job waits) without the manager doing any I/O.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal, Protocol

from limiter.core.allocation import Allocation
from limiter.core.budgets import Reservation, Shortfall, usage_problems, window_end
from limiter.core.clock import Clock
from limiter.core.policy import WINDOW_LIMITS, JobType, PolicySpec
from limiter.core.refusals import Limit, Refusal, RefusalReason
from limiter.core.shadow import MEMORY_LIMIT, PARALLEL_LIMIT, QUEUE_FULL, WINDOW_SPENT

#: How long a lease is expected to run before any lease of its model was released (Retry-After).
DEFAULT_HOLD_SECONDS = 1.0

State = Literal["waiting", "granted", "rejected", "cancelled", "released", "expired"]


class AdmissionError(Exception):
    """A request refused without a lease; ``status`` is the HTTP status it maps to, and a 503 comes
    with ``retry_after``, the seconds after which trying again may succeed, and ``refusal``: the
    reason and the limit that refused (:mod:`limiter.core.refusals`)."""

    status = 400

    def __init__(self, message: str, retry_after: float = 1.0, refusal: Refusal | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = refusal.retry_after if refusal is not None else retry_after
        self.refusal = refusal

    @property
    def reason(self) -> RefusalReason:
        """The refusal's reason code (``invalid`` for a 400/404)."""
        return self.refusal.reason if self.refusal is not None else RefusalReason.INVALID


class UnknownJobType(AdmissionError):
    status = 404


class UnknownLease(AdmissionError):
    status = 404


class QueueFull(AdmissionError):
    """The job type's queue is full, or the request asked not to wait and nothing was free."""

    status = 503


class NoCapacity(AdmissionError):
    """The wait ended without a slot ("all models rejected")."""

    status = 503


class NotReady(AdmissionError):
    """The instance cannot admit work now (starting, Redis never reached, or shutting down)."""

    status = 503


class BudgetGate(Protocol):
    """Window budgets as the manager sees them (a :class:`limiter.core.budgets.BudgetLedger` fits)."""

    def try_reserve(self, model: str, amounts: Mapping[str, int], now: float) -> Reservation | Shortfall: ...

    def force_reserve(self, model: str, amounts: Mapping[str, int], now: float) -> Reservation:
        """Shadow mode: reserve ``amounts`` even where they do not fit."""
        ...


@dataclass(eq=False)
class Ticket:
    """One job: waiting for a slot, then holding one (a lease) until released."""

    id: str
    job_type: str
    models: tuple[str, ...]
    estimate: dict[str, int]
    """Estimate field -> amount: ``tokens``, ``requests``, ``memoryKB``."""
    seq: int
    enqueued_at: float
    deadline: float
    state: State = "waiting"
    model: str | None = None
    borrowed: bool = False
    granted_at: float | None = None
    reservation: Reservation | None = None
    reason: str | None = None
    shortfall: Shortfall | None = field(default=None, repr=False)
    blocker: RefusalReason | None = None
    """What kept it from a slot at its last try: ``parallel_limit``, ``memory_limit`` or
    ``window_spent`` (then :attr:`shortfall` says which windows)."""
    would_refuse: str | None = None
    """Shadow mode: granted although enforcing would have refused it, for this reason code."""

    @property
    def reserved(self) -> dict[str, int]:
        """What the lease reserved: tokens and requests (the window budget), and memoryKB."""
        return dict(self.estimate)


Listener = Callable[[Ticket], None]


class JobTypeManager:
    """Slots, queues and borrowing for the job types of one instance."""

    def __init__(
        self,
        spec: PolicySpec,
        allocation: Allocation,
        clock: Clock,
        gate: BudgetGate | None = None,
        listener: Listener | None = None,
        budget_grace_seconds: float = 0.0,
    ) -> None:
        """``budget_grace_seconds``: how long a job that asked not to wait (``wait_seconds=0``) may
        still wait when a slot is free but the budget must first be drawn from the fleet (one Redis
        round trip). 0 where budgets are local."""
        self.clock = clock
        self.budget_grace_seconds = budget_grace_seconds
        self.gate = gate
        self.listener = listener
        self._ids = itertools.count(1)
        # Waiting tickets, by id in arrival order, and by kind: (job type, models) -> FIFO queue (ids
        # in arrival order). Only the head of a kind is ever tried, so every operation costs the
        # number of kinds, not the number of waiting tickets (bench/admission.py).
        self._waiting: dict[str, Ticket] = {}
        self._kinds: dict[tuple[str, tuple[str, ...]], dict[str, Ticket]] = {}
        self._waiting_by_type: Counter[str] = Counter()
        self._waiting_on_counts: Counter[tuple[str, str]] = Counter()
        self._deadlines: list[tuple[float, int, Ticket]] = []  # heap; stale entries are skipped
        self.leases: dict[str, Ticket] = {}
        self.in_flight: Counter[tuple[str, str]] = Counter()
        self.on_model: Counter[str] = Counter()
        """Leases in flight per model, all job types together (held to the allocation's ceilings)."""
        self.memory_in_use_kb = 0
        self.stats: Counter[str] = Counter()
        self.fleet_windows: Callable[[str], tuple[str, float] | None] | None = None
        """model -> the window limit the fleet last refused it on and the seconds until that window
        ends (the fleet adapter's view); None, or None for a model: the local windows tell."""
        self.held: dict[tuple[str, str], tuple[int, float]] = {}
        """(job type, model) -> (leases released, seconds they were held in all): the mean hold
        time is how long a lease is expected to run (for Retry-After)."""
        self.spec = spec
        self.allocation = allocation
        self._apply(spec, allocation)

    # -- configuration -------------------------------------------------------------------------------

    def _apply(self, spec: PolicySpec, allocation: Allocation) -> None:
        self.spec = spec
        self.allocation = allocation
        self.types: dict[str, JobType] = {j.name: j for j in spec.job_types}
        self.flexible = {j.name for j in spec.job_types if j.flexible}
        self.slots: dict[tuple[str, str], int] = {
            (j, m): share.slots for j, per in allocation.slots.items() for m, share in per.items()
        }
        self.models = [m.name for m in spec.models]
        self.memory_budget_kb = allocation.memory_budget_kb
        self.ceilings = allocation.ceilings
        """model -> the most leases this instance may hold on it while the fleet holds leases above
        the shares (after a join); models without one are bound by the slots alone."""
        self.shadow = spec.shadow_models()
        """Models in shadow mode: what does not fit is admitted anyway (:meth:`admit_anyway`)."""

    def set_allocation(self, allocation: Allocation) -> list[Ticket]:
        """New slots apply at once, up or down; growing capacity goes to waiting work now."""
        self._apply(self.spec, allocation)
        return self.dispatch()

    def set_policy(self, spec: PolicySpec, allocation: Allocation) -> list[Ticket]:
        """A new policy generation, live. Leases in flight keep running; waiting jobs whose type
        or models vanished are rejected."""
        self._apply(spec, allocation)
        for t in list(self._waiting.values()):
            allowed = set(spec.models_of(self.types[t.job_type])) if t.job_type in self.types else set()
            if not set(t.models) <= allowed:
                self._finish_waiting(t, "rejected", "the policy changed: job type or models no longer exist")
        return self.dispatch()

    # -- requests ------------------------------------------------------------------------------------

    def submit(
        self,
        job_type: str,
        models: Iterable[str] | None = None,
        estimate: Mapping[str, int] | None = None,
        wait_seconds: float | None = None,
    ) -> Ticket:
        """Queue a job and dispatch at once. The ticket is granted, or waiting, or raises.

        Raises :class:`UnknownJobType` (404), :class:`AdmissionError` (400) for models the type may
        not use or a bad estimate, and :class:`QueueFull` (503) when the type's queue is full.
        """
        jt = self.types.get(job_type)
        if jt is None:
            raise UnknownJobType(
                f"jobType: unknown job type '{job_type}'; known job types: {', '.join(self.types)}"
            )
        allowed = self.spec.models_of(jt)
        chosen = tuple(models) if models is not None else tuple(allowed)
        if not chosen:
            raise AdmissionError("models: must name at least one model")
        for m in chosen:
            if m not in allowed:
                raise AdmissionError(
                    f"models: job type '{job_type}' may not use model '{m}'; allowed: {', '.join(allowed)}"
                )
        est = {
            "tokens": jt.estimate.tokens,
            "requests": jt.estimate.requests,
            "memoryKB": jt.estimate.memory_kb,
        }
        for k, v in (estimate or {}).items():
            if k not in est:
                raise AdmissionError(f"estimate.{k}: unknown field; valid fields: tokens, requests, memoryKB")
            est[k] = v
        fits = tuple(m for m in chosen if not usage_problems(self.spec.model(m), est))
        if not fits:
            # An estimate above a model's smallest window limit could never be granted: say so now
            # (400) rather than let the job wait for a window that never comes.
            raise AdmissionError(usage_problems(self.spec.model(chosen[0]), est, "estimate")[0])
        chosen = fits
        waiting_of_type = self._waiting_by_type[job_type]
        now = self.clock.now()
        max_wait = jt.queue.max_wait_seconds
        wait = max_wait if wait_seconds is None else min(wait_seconds, max_wait)
        ticket = Ticket(
            id=f"{next(self._ids):x}",
            job_type=job_type,
            models=chosen,
            estimate=est,
            seq=0,
            enqueued_at=now,
            deadline=now + wait,
        )
        ticket.seq = int(ticket.id, 16)
        if self._place_now(ticket):
            return ticket
        if wait <= 0 and self.budget_grace_seconds > 0 and self._waits_only_for_budget(ticket):
            wait = self.budget_grace_seconds  # a slot is free: wait only for the budget draw
            ticket.deadline = now + wait
        if waiting_of_type >= jt.queue.max_waiting or wait <= 0:
            if self.admit_anyway(ticket, QUEUE_FULL if wait > 0 else None):
                return ticket
            self.stats["rejected_queue_full" if wait > 0 else "rejected_no_wait"] += 1
            if wait > 0:
                refusal = self.queue_refusal(ticket, waiting_of_type)
            else:
                ticket.blocker = ticket.blocker or self._head_blocker(ticket)
                refusal = self.refusal(ticket)
            raise QueueFull(f"all models rejected: {refusal.message()}", refusal=refusal)
        self._enqueue(ticket)
        return ticket

    def _enqueue(self, ticket: Ticket) -> None:
        self._waiting[ticket.id] = ticket
        self._kinds.setdefault((ticket.job_type, ticket.models), {})[ticket.id] = ticket
        self._waiting_by_type[ticket.job_type] += 1
        for m in ticket.models:
            self._waiting_on_counts[(ticket.job_type, m)] += 1
        heapq.heappush(self._deadlines, (ticket.deadline, ticket.seq, ticket))

    def _dequeue(self, ticket: Ticket) -> None:
        if self._waiting.pop(ticket.id, None) is None:
            return
        kind = (ticket.job_type, ticket.models)
        queue = self._kinds[kind]
        del queue[ticket.id]
        if not queue:
            del self._kinds[kind]
        self._waiting_by_type[ticket.job_type] -= 1
        for m in ticket.models:
            self._waiting_on_counts[(ticket.job_type, m)] -= 1

    def _head(self, kind: tuple[str, tuple[str, ...]]) -> Ticket | None:
        queue = self._kinds.get(kind)
        return next(iter(queue.values())) if queue else None

    def _place_now(self, ticket: Ticket) -> bool:
        """Grant at once when no earlier job of the same kind waits (FIFO) and a slot is free."""
        if (ticket.job_type, ticket.models) in self._kinds:
            return False
        placed = self._place(ticket, self._waiting_on())
        if placed:
            self._grant(ticket, *placed)
        return placed is not None

    def _head_blocker(self, ticket: Ticket) -> RefusalReason:
        """What blocks the oldest waiting job of ``ticket``'s kind (what ``ticket`` waits behind)."""
        head = self._head((ticket.job_type, ticket.models))
        if head is not None and head.blocker is not None:
            return head.blocker
        return RefusalReason.PARALLEL_LIMIT

    def _waits_only_for_budget(self, ticket: Ticket) -> bool:
        """Whether the ticket (or the jobs of its kind queued ahead of it, FIFO) found a free slot
        and waits only for window budget to be drawn."""
        if ticket.shortfall is not None:
            return True
        # The oldest job of its kind is the one dispatch tries first (FIFO); the others behind it
        # have not been tried and carry no shortfall of their own.
        head = self._head((ticket.job_type, ticket.models))
        return head is not None and head.shortfall is not None

    def admit_anyway(self, ticket: Ticket, reason: str | None = None) -> bool:
        """Shadow mode: grant a job that enforcing would refuse now (its queue is full, or its wait
        ended) on the first of its models in shadow, noting why in ``ticket.would_refuse``
        (``reason``, else what blocks it there). It takes a slot beyond the allocation and charges
        its estimate to the window budgets even beyond what is left, as if it fitted. False (and
        nothing changes) when none of its models is in shadow or it no longer waits."""
        model = next((m for m in ticket.models if m in self.shadow), None)
        if model is None or ticket.state != "waiting":
            return False
        self._dequeue(ticket)
        why = reason or self._blocker(ticket, model)
        reservation = self._reserve(ticket, model)
        if reservation is None:
            assert self.gate is not None  # only a gate falls short
            amounts = {k: ticket.estimate.get(k, 0) for k in ("tokens", "requests")}
            reservation = self.gate.force_reserve(model, amounts, self.clock.now())
            why = why or WINDOW_SPENT
        ticket.would_refuse = why or PARALLEL_LIMIT  # a free slot and budget: FIFO behind others
        self.stats["shadow_admitted"] += 1
        self._grant(ticket, model, False, reservation)  # frees nothing: no dispatch needed
        return True

    def _blocker(self, t: Ticket, model: str) -> str | None:
        """What keeps ``t`` off ``model`` besides its window budget: the memory budget or the
        slots (None: neither)."""
        mem = t.estimate.get("memoryKB", 0)
        if self.memory_budget_kb is not None and self.memory_in_use_kb + mem > self.memory_budget_kb:
            return MEMORY_LIMIT
        if self._at_ceiling(model):
            return PARALLEL_LIMIT
        own = self.in_flight[(t.job_type, model)] < self.slots.get((t.job_type, model), 0)
        if t.job_type in self.flexible:
            if self._flexible_free(model) <= 0:
                return PARALLEL_LIMIT
            if not own and self._lendable(t.job_type, model, self._waiting_on()) <= 0:
                return PARALLEL_LIMIT
        elif not own:
            return PARALLEL_LIMIT
        return None

    def cancel(self, ticket: Ticket, reason: str = "cancelled by the client") -> None:
        """A waiting job leaves the queue (its client went away). No effect on other states."""
        if ticket.state == "waiting":
            self._finish_waiting(ticket, "cancelled", reason)
            self.dispatch()

    def release(self, ticket: Ticket, expired: bool = False) -> list[Ticket]:
        """A lease ends; its slot goes to waiting work at once. Returns the tickets granted."""
        if ticket.state != "granted" or ticket.model is None:
            return []
        ticket.state = "expired" if expired else "released"
        if not expired and ticket.granted_at is not None:
            n, total = self.held.get((ticket.job_type, ticket.model), (0, 0.0))
            self.held[(ticket.job_type, ticket.model)] = (
                n + 1,
                total + max(0.0, self.clock.now() - ticket.granted_at),
            )
        self.leases.pop(ticket.id, None)
        self.in_flight[(ticket.job_type, ticket.model)] -= 1
        self.on_model[ticket.model] -= 1
        self.memory_in_use_kb -= ticket.estimate.get("memoryKB", 0)
        self.stats["expired" if expired else "released"] += 1
        return self.dispatch()

    def expire(self) -> list[Ticket]:
        """Reject waiting jobs past their deadline and expire leases past the lease timeout."""
        now = self.clock.now()
        out = []
        due = []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, t = heapq.heappop(self._deadlines)
            if t.state == "waiting" and t.deadline == deadline:  # else granted or gone since
                due.append(t)
        for t in sorted(due, key=lambda t: t.seq):  # in arrival order, as the queue holds them
            if self.admit_anyway(t):
                out.append(t)
                continue
            self._finish_waiting(t, "rejected", "all models rejected: no slot freed within the wait")
            self.stats["rejected_timeout"] += 1
            out.append(t)
        if len(self._deadlines) > 2 * len(self._waiting) + 64:  # drop the stale entries now and then
            self._deadlines = [e for e in self._deadlines if e[2].state == "waiting"]
            heapq.heapify(self._deadlines)
        timeout = self.spec.instance.lease_timeout_seconds
        for t in list(self.leases.values()):
            if t.granted_at is not None and t.granted_at + timeout <= now:
                self.release(t, expired=True)
                out.append(t)
        return out

    # -- dispatch --------------------------------------------------------------------------------------

    def dispatch(self) -> list[Ticket]:
        """Grant every waiting job that can run now, oldest first. Returns the granted tickets.

        A pass tries the waiting jobs in arrival order, but only the head of each kind (job type
        and models): once a kind's head cannot run, nothing behind it of the same kind is tried
        (FIFO). The heads are merged by arrival, so a pass costs the kinds and the grants, never
        the depth of the queues. Passes repeat while one granted something, since a job leaving
        a queue can let a borrower in (owners with waiting work come first)."""
        granted: list[Ticket] = []
        progress = True
        while progress and self._waiting:
            progress = False
            heads = [(q[next(iter(q))].seq, kind) for kind, q in self._kinds.items()]
            heapq.heapify(heads)
            while heads:
                _, kind = heapq.heappop(heads)
                t = self._head(kind)
                if t is None:
                    continue
                placed = self._place(t, self._waiting_on_counts)
                if placed is None:
                    continue  # the kind is blocked for this pass
                self._dequeue(t)
                self._grant(t, *placed)
                granted.append(t)
                progress = True
                following = self._head(kind)
                if following is not None:
                    heapq.heappush(heads, (following.seq, kind))
        return granted

    def _waiting_on(self) -> Counter[tuple[str, str]]:
        """Waiting jobs per (job type, model) they may run on."""
        return self._waiting_on_counts

    def _place(self, t: Ticket, waiting_on: Counter[tuple[str, str]]) -> tuple[str, bool, Reservation] | None:
        t.shortfall = None  # set again below if the window budget is what blocks it now
        t.blocker = RefusalReason.PARALLEL_LIMIT
        mem = t.estimate.get("memoryKB", 0)
        if self.memory_budget_kb is not None and self.memory_in_use_kb + mem > self.memory_budget_kb:
            t.blocker = RefusalReason.MEMORY_LIMIT
            return None
        flexible = t.job_type in self.flexible
        for m in t.models:
            if self._at_ceiling(m):
                continue  # the fleet still holds leases above the shares (a join): keep this free
            own = self.in_flight[(t.job_type, m)] < self.slots.get((t.job_type, m), 0)
            if flexible and self._flexible_free(m) <= 0:
                continue  # its own slot is lent out: it comes back when the borrowed job ends
            borrow = not own and flexible and self._lendable(t.job_type, m, waiting_on) > 0
            if not (own or borrow):
                continue
            reservation = self._reserve(t, m)
            if reservation is not None:
                return m, borrow, reservation
        return None

    def _at_ceiling(self, model: str) -> bool:
        """Whether the leases on ``model`` reached the allocation's ceiling for it (see
        :attr:`limiter.core.allocation.Allocation.ceilings`)."""
        ceiling = self.ceilings.get(model)
        return ceiling is not None and self.on_model[model] >= ceiling

    def _flexible_free(self, model: str) -> int:
        """Flexible slots on ``model`` that nobody holds (negative after the pool shrank)."""
        return sum(self.slots.get((k, model), 0) - self.in_flight[(k, model)] for k in self.flexible)

    def _lendable(self, job_type: str, model: str, waiting_on: Counter[tuple[str, str]]) -> int:
        """Flexible slots on ``model`` free for a borrower, after owners with waiting work."""
        free = 0
        owed = 0
        for k in self.flexible:
            own = self.slots.get((k, model), 0)
            busy = self.in_flight[(k, model)]
            free += own - busy
            if k != job_type:
                owed += min(waiting_on[(k, model)], max(0, own - busy))
        return free - owed

    def _reserve(self, t: Ticket, model: str) -> Reservation | None:
        amounts = {"tokens": t.estimate.get("tokens", 0), "requests": t.estimate.get("requests", 0)}
        if self.gate is None:
            return Reservation(model, amounts, {})
        result = self.gate.try_reserve(model, amounts, self.clock.now())
        if isinstance(result, Shortfall):
            t.shortfall = result
            t.blocker = RefusalReason.WINDOW_SPENT
            return None
        t.shortfall = None
        return result

    def _grant(self, t: Ticket, model: str, borrowed: bool, reservation: Reservation) -> None:
        t.state = "granted"
        t.model = model
        t.borrowed = borrowed
        t.reservation = reservation
        t.granted_at = self.clock.now()
        t.shortfall = None
        t.blocker = None
        self.leases[t.id] = t
        self.in_flight[(t.job_type, model)] += 1
        self.on_model[model] += 1
        self.memory_in_use_kb += t.estimate.get("memoryKB", 0)
        self.stats["granted"] += 1
        if borrowed:
            self.stats["borrowed"] += 1
        if self.listener:
            self.listener(t)

    def _finish_waiting(self, t: Ticket, state: State, reason: str) -> None:
        self._dequeue(t)
        t.state = state
        t.reason = reason
        if self.listener:
            self.listener(t)

    # -- refusals ----------------------------------------------------------------------------------------

    def expected_hold(self, job_type: str, model: str) -> float | None:
        """Mean seconds a lease of ``job_type`` on ``model`` was held (None before any release)."""
        n, total = self.held.get((job_type, model), (0, 0.0))
        if not n:
            n, total = (
                sum(c for (_, m), (c, _) in self.held.items() if m == model),
                sum(s for (_, m), (_, s) in self.held.items() if m == model),
            )
        return total / n if n else None

    def next_free(self, ticket: Ticket) -> float:
        """Seconds until the earliest lease on ``ticket``'s models is expected to end (its grant time
        plus the mean hold time); :data:`DEFAULT_HOLD_SECONDS` when nothing is known, 0 when one is due."""
        now = self.clock.now()
        ends = [
            t.granted_at + hold - now
            for t in self.leases.values()
            if t.model in ticket.models
            and t.granted_at is not None
            and (hold := self.expected_hold(t.job_type, t.model)) is not None
        ]
        return max(0.0, min(ends)) if ends else DEFAULT_HOLD_SECONDS

    def _slots_of(self, ticket: Ticket) -> int:
        return sum(self.slots.get((ticket.job_type, m), 0) for m in ticket.models)

    def _drain(self, ticket: Ticket, ahead: int) -> float:
        """Seconds until ``ahead`` jobs queued before ``ticket`` and then it should have started."""
        hold = self.expected_hold(ticket.job_type, ticket.models[0]) or DEFAULT_HOLD_SECONDS
        return self.next_free(ticket) + ahead / max(1, self._slots_of(ticket)) * hold

    def queue_refusal(self, ticket: Ticket, waiting: int) -> Refusal:
        """The refusal of ``ticket`` when its job type's queue (``waiting`` long) is full: retry once
        the queue ahead should have drained."""
        jt = self.types[ticket.job_type]
        drain = self._drain(ticket, waiting)
        return Refusal(
            RefusalReason.QUEUE_FULL,
            Limit("maxWaiting", job_type=ticket.job_type, value=jt.queue.max_waiting),
            retry_after=drain,
            position=waiting + 1,
            estimated_start=drain,
        )

    def refusal(self, ticket: Ticket, window: tuple[str, float] | None = None) -> Refusal:
        """Why ``ticket`` got no slot (it never waited, or its wait ended), and when to retry.

        ``window``: the window limit that refused and the seconds until it ends, as the fleet
        reported it; without it the ticket's :class:`Shortfall` (local windows) tells.
        """
        model = ticket.models[0]
        reason = ticket.blocker or RefusalReason.PARALLEL_LIMIT
        position = None
        if self._waiting.get(ticket.id) is ticket:
            position = 1 + sum(
                1
                for (job_type, _), queue in self._kinds.items()
                if job_type == ticket.job_type
                for t in queue.values()
                if t.seq < ticket.seq
            )
        if reason is RefusalReason.WINDOW_SPENT:
            on = ticket.shortfall.model if ticket.shortfall else model
            if window is None and self.fleet_windows is not None:
                window = self.fleet_windows(on)
            name, seconds = window or self._shortfall_window(ticket)
            dimension, length = WINDOW_LIMITS[name]
            try:
                value = self.spec.model(
                    ticket.shortfall.model if ticket.shortfall else model
                ).limits.as_dict()[name]
            except KeyError:
                value = None
            return Refusal(
                reason,
                Limit(
                    name,
                    model=ticket.shortfall.model if ticket.shortfall else model,
                    dimension=dimension,
                    window="minute" if length == 60 else "day",
                    value=value,
                ),
                retry_after=seconds,
            )
        if reason is RefusalReason.MEMORY_LIMIT:
            return Refusal(
                reason,
                Limit("memoryBudgetMB", value=(self.memory_budget_kb or 0) // 1024),
                retry_after=self.next_free(ticket),
            )
        ahead_n = (position - 1) if position is not None else 0
        start = self._drain(ticket, ahead_n)
        slots = Limit(
            "slots", model=model, job_type=ticket.job_type, value=self.slots.get((ticket.job_type, model), 0)
        )
        if self._at_ceiling(model):  # a join settles: the fleet still holds leases above the shares
            slots = Limit("maxConcurrentRequests", model=model, value=self.ceilings[model])
        return Refusal(
            RefusalReason.PARALLEL_LIMIT,
            slots,
            retry_after=self.next_free(ticket),
            position=position,
            estimated_start=start if position is not None else None,
        )

    def _shortfall_window(self, ticket: Ticket) -> tuple[str, float]:
        """The window limit of the ticket's shortfall that frees last, and the seconds until then."""
        now = self.clock.now()
        needs = ticket.shortfall.needs if ticket.shortfall is not None else {}
        best: tuple[str, float] | None = None
        for name in needs:
            if name in WINDOW_LIMITS:
                end = window_end(now, WINDOW_LIMITS[name][1]) - now
                if best is None or end > best[1]:
                    best = (name, end)
        return best or ("tokensPerMinute", window_end(now, 60) - now)

    # -- reporting ---------------------------------------------------------------------------------------

    def waiting(self, job_type: str | None = None) -> list[Ticket]:
        """Waiting tickets, oldest first (of one type, or all)."""
        return [t for t in self._waiting.values() if job_type is None or t.job_type == job_type]

    def shortfalls(self) -> list[Shortfall]:
        """Budget shortfalls that currently block waiting jobs (what a fleet adapter should draw).

        Only a kind's head is ever tried (in :meth:`submit` when none of its kind waits, in
        :meth:`dispatch` as the head), and it stays the head until it leaves the queue, so only
        heads carry a shortfall."""
        heads = (next(iter(q.values())) for q in self._kinds.values())
        return [t.shortfall for t in heads if t.shortfall is not None]

    def _lending(self) -> tuple[Counter[tuple[str, str]], dict[tuple[str, str], Fraction]]:
        """Per (job type, model): effective slots (own - lent + borrowed), and the share of the
        model's capacity moved to (+) or from (-) the type by borrowing.

        Borrowed slots are covered by idle flexible owners in policy order; a lent slot is worth
        its owner's ``ratio / own slots`` of the model, and borrowers share what was lent in
        proportion to what they borrowed.
        """
        eff: Counter[tuple[str, str]] = Counter()
        moved: dict[tuple[str, str], Fraction] = {}
        for m in self.models:
            extra: dict[str, int] = {}
            for j in self.types:
                own = self.slots.get((j, m), 0)
                extra[j] = max(0, self.in_flight[(j, m)] - own) if j in self.flexible else 0
                eff[(j, m)] = own + extra[j]
            borrowed_total = sum(extra.values())
            to_cover, value_lent = borrowed_total, Fraction(0)
            for j in self.types:  # lenders, in policy order, give up idle slots to cover the borrowing
                own = self.slots.get((j, m), 0)
                if to_cover <= 0 or j not in self.flexible or own == 0:
                    continue
                lent = min(max(0, own - self.in_flight[(j, m)]), to_cover)
                eff[(j, m)] -= lent
                to_cover -= lent
                worth = self.types[j].exact_ratio * lent / own
                moved[(j, m)] = moved.get((j, m), Fraction(0)) - worth
                value_lent += worth
            for j, n in extra.items():
                if n:
                    moved[(j, m)] = moved.get((j, m), Fraction(0)) + value_lent * n / borrowed_total
        return eff, moved

    def effective_slots(self) -> dict[str, int]:
        """Per job type: own slots, minus what it lends, plus what it borrows (summed over models)."""
        eff, _ = self._lending()
        return {j: sum(eff[(j, m)] for m in self.models) for j in self.types}

    def snapshot(self) -> dict[str, dict[str, object]]:
        """``jobTypes`` of ``GET /api/debug/allocation``: ratios, in flight, waiting, slots.

        ``currentRatio`` is the type's effective share of capacity: its ratio, minus what it lends,
        plus what it borrows, averaged over the models it may use. Idle, it equals ``initialRatio``.
        """
        eff, moved = self._lending()
        waiting = self._waiting_by_type
        out: dict[str, dict[str, object]] = {}
        for j, jt in self.types.items():
            models = self.spec.models_of(jt)
            current = jt.exact_ratio + sum(
                (moved.get((j, m), Fraction(0)) for m in models), Fraction(0)
            ) / len(models)
            out[j] = {
                "currentRatio": round(float(current), 6),
                "initialRatio": jt.ratio,
                "flexible": jt.flexible,
                "inFlight": sum(self.in_flight[(j, m)] for m in self.models),
                "waiting": waiting[j],
                "allocatedSlots": sum(eff[(j, m)] for m in self.models),
                "ownSlots": sum(self.slots.get((j, m), 0) for m in self.models),
            }
        return out
