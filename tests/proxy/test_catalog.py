"""The model lists and the Ollama surface that clients call before they generate, with the real
clients (the openai SDK, the ollama Python client) through a real instance to the stand-in server:
``/v1/models``, ``/api/tags``, ``/api/version``, ``/api/ps`` (answered from the policy) and
``/api/show``, ``/api/embed`` (forwarded under a lease, usage settled)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import ollama
import openai
import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.proxy.conftest import day_tokens_used, model, openai_client, settled, start_proxy
from tests.support.fleet import Fleet, Instance
from tests.support.http import http
from tests.support.waiting import wait_until

DAY = {"tokensPerDay": 10_000_000, "maxConcurrentRequests": 8}


@pytest.fixture(scope="module")
def proxy(module_fleet: Fleet, module_llm: FakeLLMServer) -> Iterator[Instance]:
    url = module_llm.url
    yield start_proxy(
        module_fleet,
        "proxy-catalog",
        [
            model("gpt-cat", url, limits=DAY),
            model("llama-cat:8b", url, "ollama", limits=DAY),
            model("embed-cat", url, "ollama", limits=DAY),
            {"name": "not-proxied", "limits": {"maxConcurrentRequests": 2}},
        ],
        job_types=[
            {"name": "chat", "ratio": 0.5, "estimate": {"tokens": 500}},
            {"name": "embedder", "ratio": 0.5, "estimate": {"tokens": 50}, "models": ["embed-cat"]},
        ],
    )


@pytest.fixture
def ollama_client(proxy: Instance) -> Iterator[Callable[..., ollama.Client]]:
    """Ollama clients of the instance, closed after the test (``headers`` as the client takes them)."""
    made: list[ollama.Client] = []

    def make(**headers: str) -> ollama.Client:
        made.append(ollama.Client(host=proxy.url, headers=headers or None))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_openai_models_lists_every_proxied_model(proxy: Instance) -> None:
    with openai_client(proxy) as client:
        listed = client.models.list()
        assert [m.id for m in listed.data] == ["gpt-cat", "llama-cat:8b", "embed-cat"]
        assert all(m.object == "model" and m.owned_by == "fleet-limiter" for m in listed.data)
        assert client.models.retrieve("llama-cat:8b").id == "llama-cat:8b"
        with pytest.raises(openai.NotFoundError, match="unknown model 'not-proxied'"):
            client.models.retrieve("not-proxied")
    with openai_client(proxy, "embedder") as client:  # only what the job type may use
        assert [m.id for m in client.models.list().data] == ["embed-cat"]
    status, body, _ = http("GET", proxy.url + "/v1/models", headers={"X-Job-Type": "nope"})
    assert status == 404 and "unknown job type 'nope'" in body["error"]["message"]


def test_ollama_list_version_and_ps(
    proxy: Instance, module_llm: FakeLLMServer, ollama_client: Callable[..., ollama.Client]
) -> None:
    client = ollama_client()
    assert [m.model for m in client.list().models] == ["llama-cat:8b", "embed-cat"]  # Ollama upstreams only
    status, body, _ = http("GET", proxy.url + "/api/version")
    assert status == 200 and body["version"].count(".") == 2
    assert client.ps().models == []
    # While a request runs, its model shows in /api/ps.
    module_llm.behave("llama-cat:8b", latency=1.0)
    try:
        done = threading.Event()
        worker = threading.Thread(
            target=lambda: (client.generate(model="llama-cat:8b", prompt="hi", stream=False), done.set())
        )
        worker.start()
        wait_until(lambda: [m.model for m in client.ps().models] == ["llama-cat:8b"], timeout=5)
        running = client.ps().models[0]
        assert running.expires_at is not None and running.size_vram == 0
        worker.join(10)
        assert done.is_set()
    finally:
        module_llm.behave("llama-cat:8b")
    settled(proxy, "llama-cat:8b")
    assert client.ps().models == []


def test_ollama_show_is_forwarded(
    proxy: Instance, module_llm: FakeLLMServer, ollama_client: Callable[..., ollama.Client]
) -> None:
    client = ollama_client()
    shown = client.show("llama-cat:8b")
    assert shown.details is not None and shown.details.family == "fake"
    assert shown.capabilities == ["completion", "embedding"]
    assert module_llm.received("llama-cat:8b")[-1].path == "/api/show"
    settled(proxy, "llama-cat:8b")
    with pytest.raises(ollama.ResponseError) as info:
        client.show("gpt-cat")  # an openai upstream does not speak the Ollama API
    assert info.value.status_code == 400 and "does not speak the Ollama API" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.show("nope")
    assert info.value.status_code == 404 and "unknown model 'nope'" in info.value.error


def test_ollama_embed_takes_a_lease_and_settles_usage(
    proxy: Instance, module_llm: FakeLLMServer, ollama_client: Callable[..., ollama.Client]
) -> None:
    client = ollama_client(**{"X-Job-Type": "embedder"})
    before = day_tokens_used(proxy, "embed-cat")
    answer = client.embed(model="embed-cat", input=["x" * 400, "y" * 400])
    assert len(answer.embeddings) == 2 and answer.prompt_eval_count == 11
    settled(proxy, "embed-cat")
    # 200 reserved (800 characters / 4), 11 reported used: the lease settled with the usage.
    assert day_tokens_used(proxy, "embed-cat") - before == 11
    seen = module_llm.received("embed-cat")[-1]
    assert seen.path == "/api/embed" and seen.headers.get("X-Job-Type") is None
    stats = proxy.get("/queue/stats?model=embed-cat")["models"]["embed-cat"]
    assert stats["total_processed"] >= 1
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(model="llama-cat:8b", input="x")
    assert info.value.status_code == 400 and "may not use model 'llama-cat:8b'" in info.value.error


def test_the_ollama_cli_sequence_of_run(proxy: Instance, module_llm: FakeLLMServer) -> None:
    """What `ollama run MODEL PROMPT` sends (the CLI could not be built here): the heartbeat
    ``HEAD /``, ``POST /api/show`` for the model, then a streamed ``POST /api/chat``."""
    status, body, _ = http("GET", proxy.url + "/")
    assert status == 200 and body == "Ollama is running"
    status, _, _ = http("HEAD", proxy.url + "/")
    assert status == 200
    status, shown, _ = http("POST", proxy.url + "/api/show", {"model": "llama-cat:8b"})
    assert status == 200 and shown["details"]["format"] == "gguf"
    chat = {"model": "llama-cat:8b", "messages": [{"role": "user", "content": "why is the sky blue?"}]}
    status, streamed, headers = http("POST", proxy.url + "/api/chat", chat)
    assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in streamed.splitlines()]
    assert "".join(x["message"]["content"] for x in lines) == "tok0 tok1 tok2 "
    assert lines[-1]["done"] is True
    assert [r.path for r in module_llm.received("llama-cat:8b")[-2:]] == ["/api/show", "/api/chat"]
    settled(proxy, "llama-cat:8b")
