"""The proxy charges credit keys (spec.credits.enforce): reserve before forwarding, 429 before
anything reaches the upstream, settle with the usage the answer reports."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.proxy.conftest import ADMIN_TOKEN, ENV, model, spec
from tests.support.fleet import Fleet
from tests.support.http import http

KEY = "team-a-credit-key-0001"


@pytest.mark.timeout(60)
def test_proxy_charges_the_key_for_what_the_answer_used(fleet: Fleet, llm: FakeLLMServer) -> None:
    llm.behave("gpt-credits", prompt_tokens=30, completion_tokens=70)
    fleet.write_policy(
        "credits-proxy",
        spec([model("gpt-credits", llm.url)], credits={"enforce": True, "unit": "tokens"}),
    )
    (inst,) = fleet.start(1, env=ENV)
    assert http("PUT", f"{inst.url}/api/keys/{KEY}", {"credits": 1000}, token=ADMIN_TOKEN)[0] in (200, 201)

    client = openai.OpenAI(base_url=inst.url + "/v1", api_key=KEY, max_retries=0)
    answer = client.chat.completions.create(
        model="gpt-credits", messages=[{"role": "user", "content": "hello"}], max_tokens=200
    )
    assert answer.usage is not None and answer.usage.total_tokens == 100
    status, doc, _ = http("GET", f"{inst.url}/api/keys/{KEY}", token=ADMIN_TOKEN)
    assert status == 200 and doc["remaining"] == 900  # charged the 100 used, not the estimate
    assert all(
        "Authorization" not in r.headers or KEY not in r.headers["Authorization"] for r in llm.received()
    )

    # An estimate the key cannot cover: 429 before anything is forwarded.
    sent = len(llm.received())
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="gpt-credits", messages=[{"role": "user", "content": "x"}], max_tokens=5000
        )
    assert info.value.status_code == 429 and "do not cover this request" in str(info.value)
    assert len(llm.received()) == sent
    assert http("GET", f"{inst.url}/api/keys/{KEY}", token=ADMIN_TOKEN)[1]["remaining"] == 900

    # No key, or a key without a budget: 401, nothing forwarded.
    status, doc, _ = http("POST", inst.url + "/v1/chat/completions", {"model": "gpt-credits", "messages": []})
    assert status == 401 and "credit key is required" in doc["error"]["message"]
    stranger = openai.OpenAI(base_url=inst.url + "/v1", api_key="no-such-credit-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model="gpt-credits", messages=[{"role": "user", "content": "x"}])
    assert len(llm.received()) == sent


@pytest.mark.timeout(60)
def test_failed_upstream_costs_nothing_and_requests_unit_charges_one(
    fleet: Fleet, llm: FakeLLMServer
) -> None:
    llm.behave("gpt-flaky", status=500)
    fleet.write_policy(
        "credits-units",
        spec(
            [model("gpt-flaky", llm.url), model("gpt-ok", llm.url)],
            credits={"enforce": True, "unit": "requests"},
        ),
    )
    (inst,) = fleet.start(1, env=ENV)
    http("PUT", f"{inst.url}/api/keys/{KEY}", {"credits": 3}, token=ADMIN_TOKEN)
    client = openai.OpenAI(base_url=inst.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-flaky", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502
    # The upstream failed: no charge.
    assert http("GET", f"{inst.url}/api/keys/{KEY}", token=ADMIN_TOKEN)[1]["remaining"] == 3
    for _ in range(3):
        client.chat.completions.create(model="gpt-ok", messages=[{"role": "user", "content": "x"}])
    assert http("GET", f"{inst.url}/api/keys/{KEY}", token=ADMIN_TOKEN)[1]["remaining"] == 0
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-ok", messages=[{"role": "user", "content": "x"}])
