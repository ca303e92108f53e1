"""The job-type manager's queues by kind decide exactly what a scan of every waiting job decides.

The manager tries only the head of each kind (job type and models) and keeps its counts as it goes
(so an acquire or a release costs the number of kinds, not the depth of the queues;
bench/admission.py measures it). `ScanningManager` below is the straightforward reading of SPEC
section 5 it replaced: every dispatch walks every waiting job in arrival order and recounts the
queues. Both run the same random sequences of acquires, releases, cancels, clock moves, window
budgets and allocation changes; every ticket must end in the same state, on the same model, in
the same order of grants.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from limiter.core.admission import AdmissionError, JobTypeManager, Ticket
from limiter.core.allocation import compute_allocation
from limiter.core.budgets import BudgetLedger, Shortfall
from limiter.core.clock import FakeClock
from tests.unit.conftest import make_spec


class ScanningManager(JobTypeManager):
    """The reference: every decision from a full scan of the waiting jobs, in arrival order."""

    def _waiting_on(self) -> Counter[tuple[str, str]]:
        counts: Counter[tuple[str, str]] = Counter()
        for t in self._waiting.values():
            for m in t.models:
                counts[(t.job_type, m)] += 1
        return counts

    def _place_now(self, ticket: Ticket) -> bool:
        if any(t.job_type == ticket.job_type and t.models == ticket.models for t in self._waiting.values()):
            return False
        placed = self._place(ticket, self._waiting_on())
        if placed:
            self._grant(ticket, *placed)
        return placed is not None

    def dispatch(self) -> list[Ticket]:
        granted: list[Ticket] = []
        progress = True
        while progress and self._waiting:
            progress = False
            waiting_on = self._waiting_on()
            blocked: set[tuple[str, tuple[str, ...]]] = set()
            for t in list(self._waiting.values()):
                key = (t.job_type, t.models)
                if key in blocked:
                    continue
                placed = self._place(t, waiting_on)
                if placed is None:
                    blocked.add(key)
                    continue
                self._dequeue(t)
                for m in t.models:
                    waiting_on[(t.job_type, m)] -= 1
                self._grant(t, *placed)
                granted.append(t)
                progress = True
        return granted

    def shortfalls(self) -> list[Shortfall]:
        return [t.shortfall for t in self._waiting.values() if t.shortfall is not None]

    def expire(self) -> list[Ticket]:
        now = self.clock.now()
        out = []
        for t in list(self._waiting.values()):
            if t.deadline <= now:
                self._finish_waiting(t, "rejected", "all models rejected: no slot freed within the wait")
                self.stats["rejected_timeout"] += 1
                out.append(t)
        timeout = self.spec.instance.lease_timeout_seconds
        for t in list(self.leases.values()):
            if t.granted_at is not None and t.granted_at + timeout <= now:
                self.release(t, expired=True)
                out.append(t)
        return out


MODELS = [
    {"name": "a", "limits": {"maxConcurrentRequests": 6, "tokensPerMinute": 9000}},
    {"name": "b", "limits": {"maxConcurrentRequests": 4}},
]
JOBS: list[dict[str, Any]] = [
    {
        "name": "fixed",
        "ratio": 0.3,
        "flexible": False,
        "estimate": {"tokens": 500},
        "queue": {"maxWaiting": 6},
    },
    {"name": "flexA", "ratio": 0.4, "estimate": {"tokens": 1000}, "queue": {"maxWaiting": 8}},
    {"name": "flexB", "ratio": 0.3, "models": ["b", "a"], "estimate": {"tokens": 2000}},
]
MODEL_CHOICES = [None, ("a",), ("b",), ("a", "b"), ("b", "a")]

op = st.one_of(
    st.tuples(
        st.just("submit"),
        st.sampled_from(["fixed", "flexA", "flexB"]),
        st.sampled_from(MODEL_CHOICES),
        st.sampled_from([0, 0.5, 5, 30]),
    ),
    st.tuples(st.just("release"), st.integers(0, 50)),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("advance"), st.sampled_from([0.2, 1, 7, 61])),
    st.tuples(st.just("instances"), st.integers(1, 3)),
)


def run(cls: type[JobTypeManager], ops: list[tuple[Any, ...]], gate: bool) -> list[Any]:
    spec = make_spec(MODELS, JOBS, instance={"leaseTimeoutSeconds": 90})
    clock = FakeClock()
    grants: list[str] = []
    m = cls(
        spec,
        compute_allocation(spec, 2),
        clock,
        gate=BudgetLedger(spec) if gate else None,
        listener=lambda t: grants.append(f"{t.id}:{t.state}:{t.model}"),
    )
    tickets: list[Ticket] = []
    trace: list[Any] = []
    for o in ops:
        if o[0] == "submit":
            try:
                tickets.append(m.submit(o[1], o[2], wait_seconds=o[3]))
            except AdmissionError as exc:
                trace.append(type(exc).__name__)
        elif o[0] == "release":
            held = [t for t in tickets if t.state == "granted"]
            if held:
                m.release(held[o[1] % len(held)])
        elif o[0] == "cancel":
            waiting = [t for t in tickets if t.state == "waiting"]
            if waiting:
                m.cancel(waiting[o[1] % len(waiting)])
        elif o[0] == "advance":
            clock.advance(o[1])
            m.expire()
            m.dispatch()
        else:
            m.set_allocation(compute_allocation(spec, o[1]))
        trace.append(
            (
                [(t.id, t.state, t.model, t.borrowed) for t in tickets],
                sorted(str(s) for s in m.shortfalls()),
                {j: (v["inFlight"], v["waiting"], v["allocatedSlots"]) for j, v in m.snapshot().items()},
            )
        )
    return [trace, grants]


@settings(max_examples=300, deadline=None)
@given(st.lists(op, min_size=1, max_size=60), st.booleans())
def test_queues_by_kind_decide_as_a_full_scan_does(ops: list[tuple[Any, ...]], gate: bool) -> None:
    assert run(JobTypeManager, ops, gate) == run(ScanningManager, ops, gate)


def test_the_reference_is_not_the_manager() -> None:
    """The comparison above compares two different algorithms (a guard against a refactor that
    makes ScanningManager inherit the very code it checks)."""
    assert ScanningManager.dispatch is not JobTypeManager.dispatch
    assert ScanningManager.expire is not JobTypeManager.expire
    assert ScanningManager.shortfalls is not JobTypeManager.shortfalls
