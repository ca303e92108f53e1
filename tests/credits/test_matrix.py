"""Never overspent, over real instances: the generated matrix of issue 8.

Nodes 1, 3, 5, 9 x credits 10, 100, 500, 1000 x cost 1, 5, 10, 20 x load 0.8, 1.0, 1.5, 3.0 of what
the budget allows. Each case PUTs a fresh key, fires every consume at once over HTTP, spread round
robin over all the nodes, and checks that exactly min(requests, floor(credits / cost)) succeed,
that each success saw a different balance, and that exactly credits - successes * cost is left.

The whole matrix (256 cases) is marked slow (``make test-long``); a slice of it, every node count
and the edge cases (nothing affordable, one credit per request, 3x overload), runs in ``make test``.
Cases are ordered by node count and each fleet starts once for all the cases of its count
(:class:`~tests.credits.conftest.FleetPool`), not per case.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import Counter

import aiohttp
import pytest

from tests.credits.conftest import FleetPool, Nodes, call, get_key, new_key, put_key

pytestmark = pytest.mark.redis

NODES = (1, 3, 5, 9)
CREDITS = (10, 100, 500, 1000)
COSTS = (1, 5, 10, 20)
LOADS = (0.8, 1.0, 1.5, 3.0)

Case = tuple[int, int, int, float]
MATRIX: list[Case] = list(itertools.product(NODES, CREDITS, COSTS, LOADS))  # ordered by node count
#: The slice that runs in `make test`: every node count, nothing affordable (10 credits at cost 20),
#: cost 1 with the most requests, and every load.
SLICE: list[Case] = [
    (1, 100, 5, 1.5),
    (1, 10, 20, 1.0),
    (1, 1000, 1, 1.0),
    (1, 500, 10, 3.0),
    (3, 10, 1, 3.0),
    (3, 100, 1, 1.5),
    (3, 500, 20, 0.8),
    (3, 1000, 5, 1.0),
    (5, 100, 10, 3.0),
    (5, 10, 5, 1.5),
    (5, 1000, 20, 1.5),
    (5, 500, 1, 0.8),
    (9, 1000, 1, 1.5),
    (9, 100, 5, 3.0),
    (9, 10, 20, 3.0),
    (9, 500, 10, 1.0),
    (9, 10, 1, 0.8),
]
assert set(SLICE) <= set(MATRIX) and sorted(SLICE, key=lambda c: c[0]) == SLICE


def requests_for(credits: int, cost: int, load: float) -> int:
    """``load`` times what the budget allows, at least one request (also when nothing fits)."""
    return max(1, math.ceil(load * (credits // cost)))


def case_id(case: Case) -> str:
    nodes, credits, cost, load = case
    return f"{nodes}nodes-{credits}credits-cost{cost}-load{load}"


async def run_case(
    nodes: Nodes, session: aiohttp.ClientSession, credits: int, cost: int, load: float
) -> None:
    key = new_key("matrix")
    await put_key(session, nodes.url(0), key, credits=credits)
    requests = requests_for(credits, cost, load)
    urls = nodes.urls

    async def consume(i: int) -> tuple[int, dict[str, object]]:
        status, doc, _ = await call(
            session, "POST", f"{urls[i % len(urls)]}/api/keys/{key}/consume", {"cost": cost}
        )
        return status, doc

    answers = await asyncio.gather(*(consume(i) for i in range(requests)))
    successes = min(requests, credits // cost)
    statuses = Counter(status for status, _ in answers)
    assert statuses == Counter({200: successes, 429: requests - successes}) - Counter(), statuses
    # Atomic: every success saw its own balance, from credits - cost down to the last one.
    seen = sorted((doc["remaining"] for status, doc in answers if status == 200), reverse=True)  # type: ignore[type-var]
    assert seen == [credits - k * cost for k in range(1, successes + 1)]
    assert all(doc["remaining"] == credits - successes * cost for status, doc in answers if status == 429)
    state = await get_key(session, urls[-1], key)
    assert state["remaining"] == credits - successes * cost
    totals = state["totals"]
    assert (totals["consumed"], totals["consumes"], totals["refused"]) == (
        successes * cost,
        successes,
        requests - successes,
    )


@pytest.mark.parametrize(("nodes", "credits", "cost", "load"), SLICE, ids=map(case_id, SLICE))
@pytest.mark.timeout(90)
async def test_matrix_slice(
    fleets: FleetPool, session: aiohttp.ClientSession, nodes: int, credits: int, cost: int, load: float
) -> None:
    await run_case(fleets.get(nodes), session, credits, cost, load)


@pytest.mark.slow
@pytest.mark.parametrize(("nodes", "credits", "cost", "load"), MATRIX, ids=map(case_id, MATRIX))
@pytest.mark.timeout(90)
async def test_matrix(
    fleets: FleetPool, session: aiohttp.ClientSession, nodes: int, credits: int, cost: int, load: float
) -> None:
    await run_case(fleets.get(nodes), session, credits, cost, load)


@pytest.mark.timeout(60)
async def test_one_credit_and_100_concurrent_requests_over_9_nodes(
    fleets: FleetPool, session: aiohttp.ClientSession
) -> None:
    nodes = fleets.get(9)
    assert len(nodes.urls) == 9
    for _ in range(5):  # several rounds: one lucky round proves little
        key = new_key("one")
        await put_key(session, nodes.url(0), key, credits=1)
        answers = await asyncio.gather(
            *(
                call(session, "POST", f"{nodes.urls[i % 9]}/api/keys/{key}/consume", {"cost": 1})
                for i in range(100)
            )
        )
        statuses = Counter(status for status, _, _ in answers)
        assert statuses == Counter({200: 1, 429: 99})
        state = await get_key(session, nodes.url(), key)
        assert (state["remaining"], state["totals"]["consumed"]) == (0, 1)
