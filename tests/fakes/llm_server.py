"""FakeLLMServer: a stand-in for an LLM server in tests. It runs no model: it answers canned text.

It speaks both wire formats the proxy forwards, on 127.0.0.1 and a free port, from an aiohttp
server running in a thread of its own:

* OpenAI-compatible ``POST /v1/chat/completions``, ``/v1/completions`` (JSON, or SSE when
  ``stream``, with a usage event when ``stream_options.include_usage``) and ``/v1/embeddings``;
* the OpenAI Responses API ``POST /v1/responses``: a ``response`` object (one assistant message,
  ``usage`` with ``input_tokens``, ``output_tokens``, ``total_tokens``), or with ``stream`` the
  typed SSE events of OpenAI's API reference (``event: <type>`` and ``data`` with ``type`` and
  ``sequence_number``): ``response.created``, ``response.in_progress``,
  ``response.output_item.added``, ``response.content_part.added``, ``response.output_text.delta``
  per chunk, ``response.output_text.done``, ``response.content_part.done``,
  ``response.output_item.done``, ``response.completed`` (the final response with its usage; no
  ``[DONE]``, as in the real API);
* Ollama ``POST /api/generate`` and ``/api/chat`` (NDJSON streams by default, JSON with
  ``"stream": false``), reporting ``prompt_eval_count`` and ``eval_count``; ``/api/embed``
  (reporting ``prompt_eval_count``) and ``/api/show`` (canned metadata).

Each model's :class:`Behaviour` sets latency, stream pacing, the usage it reports, errors (a 5xx,
a 429 with ``Retry-After``) and dropped connections. The server records every request and the
most requests it ever had in flight per model, so tests can check what reached "the upstream".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal

from aiohttp import web


@dataclass(frozen=True)
class Behaviour:
    """How the fake answers requests for one model."""

    latency: float = 0.0
    """Seconds before the answer (before the first chunk of a stream)."""
    chunk_delay: float = 0.0
    """Seconds between stream chunks."""
    chunks: int = 3
    """Content chunks in a stream."""
    prompt_tokens: int = 11
    completion_tokens: int = 7
    report_usage: bool = True
    """False: answers carry no usage at all (the proxy must keep the estimate)."""
    status: int = 200
    """Another status answers a JSON error: a 5xx, or 429 (with ``retry_after``)."""
    retry_after: str | None = None
    drop: Literal["before", "mid-stream"] | None = None
    """Close the connection before answering, or after the first stream chunk."""
    responses_final: bool = True
    """False: a Responses stream ends (cleanly) without its ``response.completed`` event."""


@dataclass
class Recorded:
    """One request the fake received."""

    path: str
    model: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


class FakeLLMServer:
    """The stand-in server; use as a context manager, or :meth:`start` and :meth:`stop`."""

    def __init__(self, port: int = 0) -> None:
        self.default = Behaviour()
        self.behaviours: dict[str, Behaviour] = {}
        self.requests: list[Recorded] = []
        self.in_flight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.port = port
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- control ------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self.port}"

    def behave(self, model: str, **changes: Any) -> None:
        """Set how ``model`` is answered (fields of :class:`Behaviour`, from the defaults)."""
        with self._lock:
            self.behaviours[model] = replace(self.default, **changes)

    def behaviour(self, model: str) -> Behaviour:
        with self._lock:
            return self.behaviours.get(model, self.default)

    def received(self, model: str | None = None) -> list[Recorded]:
        """Requests received so far (for one model, or all)."""
        with self._lock:
            return [r for r in self.requests if model is None or r.model == model]

    # -- life cycle ----------------------------------------------------------------------------------

    def start(self) -> FakeLLMServer:
        """Serve from a background thread; return once it listens."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fake-llm-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        for path in (
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/responses",
            "/api/generate",
            "/api/chat",
            "/api/embed",
            "/api/show",
        ):
            app.router.add_post(path, self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop serving and end the thread."""
        if self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- answers -------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body.get("model", ""))
        with self._lock:
            self.requests.append(Recorded(request.path, model, dict(request.headers), body))
            self.in_flight[model] += 1
            self.peak[model] = max(self.peak[model], self.in_flight[model])
        try:
            return await self._answer(request, body, model, self.behaviour(model))
        finally:
            with self._lock:
                self.in_flight[model] -= 1

    async def _answer(
        self, request: web.Request, body: dict[str, Any], model: str, how: Behaviour
    ) -> web.StreamResponse:
        if how.latency:
            await asyncio.sleep(how.latency)
        if how.drop == "before":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if how.status != 200:
            headers = {"Retry-After": how.retry_after} if how.retry_after else None
            error = {
                "error": {"message": f"fake upstream error {how.status}", "type": "fake", "code": how.status}
            }
            return web.json_response(error, status=how.status, headers=headers)
        ollama = request.path.startswith("/api/")
        stream = body.get("stream", ollama) is True and request.path not in (
            "/v1/embeddings",
            "/api/embed",
            "/api/show",
        )
        if not stream:
            return web.json_response(self._whole(request.path, model, how, body))
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-ndjson" if ollama else "text/event-stream"}
        )
        await response.prepare(request)
        if ollama:
            lines = self._ollama_stream(request.path, model, how)
        elif request.path == "/v1/responses":
            lines = self._response_events(model, how, body)
        else:
            lines = self._sse(request.path, model, how, body)
        for i, line in enumerate(lines):
            if i and how.chunk_delay:
                await asyncio.sleep(how.chunk_delay)
            await response.write(line)
            if how.drop == "mid-stream" and i == 0:
                assert request.transport is not None
                request.transport.abort()
                return response
        await response.write_eof()
        return response

    @staticmethod
    def _openai_usage(how: Behaviour) -> dict[str, int]:
        return {
            "prompt_tokens": how.prompt_tokens,
            "completion_tokens": how.completion_tokens,
            "total_tokens": how.prompt_tokens + how.completion_tokens,
        }

    @staticmethod
    def _response(model: str, how: Behaviour, body: dict[str, Any], text: str | None) -> dict[str, Any]:
        """A Responses API ``response`` object: completed with one message of ``text``, or (None)
        in progress without output or usage."""
        doc: dict[str, Any] = {
            "id": "resp_fake1",
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress" if text is None else "completed",
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": model,
            "output": [],
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": None,
            "user": None,
            "metadata": {},
        }
        if text is not None:
            doc["output"] = [FakeLLMServer._response_message(text, "completed")]
            if how.report_usage:
                doc["usage"] = {
                    "input_tokens": how.prompt_tokens,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": how.completion_tokens,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": how.prompt_tokens + how.completion_tokens,
                }
        return doc

    @staticmethod
    def _response_message(text: str | None, status: str) -> dict[str, Any]:
        content = (
            [] if text is None else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        )
        return {
            "id": "msg_fake1",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _response_events(self, model: str, how: Behaviour, body: dict[str, Any]) -> list[bytes]:
        deltas = [f"tok{i} " for i in range(how.chunks)]
        text = "".join(deltas)
        where = {"item_id": "msg_fake1", "output_index": 0, "content_index": 0}
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        started = self._response(model, how, body, None)
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": started},
            {"type": "response.in_progress", "response": started},
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": self._response_message(None, "in_progress"),
            },
            {"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
            *({"type": "response.output_text.delta", **where, "delta": d, "logprobs": []} for d in deltas),
            {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
            {"type": "response.content_part.done", **where, "part": part},
            {
                "type": "response.output_item.done",
                "output_index": 0,
                "item": self._response_message(text, "completed"),
            },
        ]
        if how.responses_final:
            events.append({"type": "response.completed", "response": self._response(model, how, body, text)})
        return [
            f"event: {e['type']}\n".encode()
            + b"data: "
            + json.dumps({**e, "sequence_number": i}).encode()
            + b"\n\n"
            for i, e in enumerate(events)
        ]

    def _whole(self, path: str, model: str, how: Behaviour, body: dict[str, Any]) -> dict[str, Any]:
        text = " ".join(f"tok{i}" for i in range(how.chunks))
        now = int(time.time())
        if path == "/v1/responses":
            return self._response(model, how, body, text)
        if path == "/v1/embeddings":
            inputs = body.get("input")
            count = len(inputs) if isinstance(inputs, list) and not isinstance(inputs[0], int) else 1
            doc: dict[str, Any] = {
                "object": "list",
                "model": model,
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(count)
                ],
            }
            if how.report_usage:
                doc["usage"] = {"prompt_tokens": how.prompt_tokens, "total_tokens": how.prompt_tokens}
            return doc
        if path == "/api/embed":
            inputs = body.get("input")
            count = len(inputs) if isinstance(inputs, list) else 1
            doc = {"model": model, "embeddings": [[0.1, 0.2, 0.3] for _ in range(count)]}
            if how.report_usage:
                doc["prompt_eval_count"] = how.prompt_tokens
            return doc
        if path == "/api/show":
            return {
                "modelfile": f"FROM {model}",
                "parameters": "temperature 0.7",
                "template": "{{ .Prompt }}",
                "details": {"format": "gguf", "family": "fake", "parameter_size": "1B"},
                "model_info": {"general.architecture": "fake"},
                "capabilities": ["completion", "embedding"],
                "modified_at": "2024-01-01T00:00:00Z",
            }
        if path.startswith("/api/"):
            doc = {"model": model, "created_at": "2024-01-01T00:00:00Z", "done": True, "done_reason": "stop"}
            if path == "/api/chat":
                doc["message"] = {"role": "assistant", "content": text}
            else:
                doc["response"] = text
            if how.report_usage:
                doc |= {"prompt_eval_count": how.prompt_tokens, "eval_count": how.completion_tokens}
            return doc
        if path == "/v1/chat/completions":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            kind = "text_completion"
        doc = {"id": "fake-1", "object": kind, "created": now, "model": model, "choices": [choice]}
        if how.report_usage:
            doc["usage"] = self._openai_usage(how)
        return doc

    def _sse(self, path: str, model: str, how: Behaviour, body: dict[str, Any]) -> list[bytes]:
        options = body.get("stream_options")
        with_usage = how.report_usage and isinstance(options, dict) and options.get("include_usage") is True
        now = int(time.time())
        chat = path == "/v1/chat/completions"
        events = []
        for i in range(how.chunks):
            if chat:
                choice: dict[str, Any] = {"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}
            else:
                choice = {"index": 0, "text": f"tok{i} ", "finish_reason": None, "logprobs": None}
            event: dict[str, Any] = {
                "id": "fake-1",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": now,
                "model": model,
                "choices": [choice],
            }
            if with_usage:
                event["usage"] = None
            events.append(event)
        if with_usage:
            events.append(
                {
                    "id": "fake-1",
                    "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": now,
                    "model": model,
                    "choices": [],
                    "usage": self._openai_usage(how),
                }
            )
        return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]

    def _ollama_stream(self, path: str, model: str, how: Behaviour) -> list[bytes]:
        lines: list[dict[str, Any]] = []
        for i in range(how.chunks):
            line: dict[str, Any] = {"model": model, "created_at": "2024-01-01T00:00:00Z", "done": False}
            if path == "/api/chat":
                line["message"] = {"role": "assistant", "content": f"tok{i} "}
            else:
                line["response"] = f"tok{i} "
            lines.append(line)
        final: dict[str, Any] = {"model": model, "created_at": "2024-01-01T00:00:00Z", "done": True}
        final["done_reason"] = "stop"
        if path == "/api/chat":
            final["message"] = {"role": "assistant", "content": ""}
        else:
            final["response"] = ""
        if how.report_usage:
            final |= {"prompt_eval_count": how.prompt_tokens, "eval_count": how.completion_tokens}
        lines.append(final)
        return [json.dumps(x).encode() + b"\n" for x in lines]


def main() -> None:
    """Serve in the foreground (benchmarks run the fake in a process of its own):
    ``python -P tests/fakes/llm_server.py [--port N]``; prints its URL, runs until SIGTERM."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="FakeLLMServer: a stand-in LLM server for tests")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeLLMServer(port=args.port) as server:
        print(server.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
