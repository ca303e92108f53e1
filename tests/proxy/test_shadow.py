"""The proxy in shadow mode, on a real instance in front of the stand-in LLM server: a burst past
parallel_limit and queue_limit is forwarded whole, and what enforcing would have refused is counted."""

from __future__ import annotations

import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.proxy.conftest import ENV, burst, model, settled, spec, stats
from tests.support.fleet import Fleet

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
JOBS = [{"name": "chat", "ratio": 1.0, "estimate": {"tokens": 100}, "queue": {"maxWaiting": 2}}]


@pytest.mark.timeout(60)
async def test_shadow_forwards_a_burst_past_the_queue_and_counts_it(fleet: Fleet, llm: FakeLLMServer) -> None:
    policy = spec([model("sh", llm.url, limits={"maxConcurrentRequests": 1})], JOBS, mode="shadow")
    fleet.write_policy("proxy-shadow", policy)
    (inst,) = fleet.start(1, env=ENV)
    doc = stats(inst, "sh")
    assert (doc["parallel_limit"], doc["queue_limit"]) == (1, 2)
    llm.behave("sh", latency=1.0)
    answers = await burst(inst.url + "/v1/chat/completions", {"model": "sh", **CHAT}, 10)
    assert [a.status for a in answers] == [200] * 10  # enforcing: 3 answers and 7 fast 503s
    assert llm.peak["sh"] > 1  # really past parallel_limit 1
    settled(inst, "sh")
    assert stats(inst, "sh")["total_rejected"] == 0
    # One went through the gate, two queued there; the seven beyond queue_limit went through anyway.
    assert inst.allocation()["wouldRefuse"] == {"sh": {"queue_full": 7}}
    # Bad input is still refused in shadow.
    status = (await burst(inst.url + "/v1/chat/completions", {"model": "nope", **CHAT}, 1))[0].status
    assert status == 404
