"""The LLM wire formats the proxy speaks, OpenAI-compatible and Ollama: pure functions, no I/O.

* What a request is expected to use (its estimate), read from its JSON body.
* What a response actually used, read from a JSON answer, an OpenAI server-sent-event (SSE)
  stream (chat and completion chunks, or the Responses API's typed events) or an Ollama
  newline-delimited JSON (NDJSON) stream, chunk by chunk as it passes.
* The ``stream_options.include_usage`` rewrite that makes an OpenAI stream report its usage, and
  the removal of that extra usage event when the client had not asked for it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

Api = Literal["openai", "ollama"]

#: Characters per token for the prompt-size estimate (the usual rule of thumb for English text).
CHARS_PER_TOKEN = 4
#: A stream parser keeps at most this many bytes of an unfinished event or line; beyond that the
#: bytes pass through unparsed (a malformed stream must not grow the proxy's memory).
MAX_PENDING_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Route:
    """One proxied endpoint."""

    path: str
    api: Api
    """The wire format the client speaks on this path."""
    kind: Literal["chat", "completion", "response", "embedding", "generate", "show"]
    stream_default: bool
    """Whether a body without ``stream`` streams (Ollama streams by default, OpenAI does not)."""
    can_stream: bool = True

    @property
    def asks_stream_usage(self) -> bool:
        """Whether a stream reports its usage only when asked (``stream_options.include_usage``):
        OpenAI chat and completion streams. A Responses stream always ends with its usage, in
        ``response.completed``, and its ``stream_options`` take no ``include_usage``."""
        return self.api == "openai" and self.kind in ("chat", "completion")


ROUTES: tuple[Route, ...] = (
    Route("/v1/chat/completions", "openai", "chat", stream_default=False),
    Route("/v1/completions", "openai", "completion", stream_default=False),
    # The Responses API: ``input`` (a string, or a list of items) and ``instructions`` in,
    # ``max_output_tokens`` bounds the output; usage from ``usage`` or ``response.completed``.
    Route("/v1/responses", "openai", "response", stream_default=False),
    Route("/v1/embeddings", "openai", "embedding", stream_default=False, can_stream=False),
    Route("/api/generate", "ollama", "generate", stream_default=True),
    Route("/api/chat", "ollama", "chat", stream_default=True),
    # Ollama's embeddings: input in, ``prompt_eval_count`` out, reserved like /v1/embeddings.
    Route("/api/embed", "ollama", "embedding", stream_default=False, can_stream=False),
    # A model's metadata from its upstream: no prompt, nothing generated (an estimate of 1 token).
    Route("/api/show", "ollama", "show", stream_default=False, can_stream=False),
)


#: The largest output limit a request may ask for (``max_tokens`` and the like), and the most choices.
MAX_OUTPUT_TOKENS = 10**9
MAX_CHOICES = 128


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def body_problem(route: Route, body: dict[str, Any]) -> str | None:
    """What makes ``body`` unusable for ``route`` (naming the field and what is valid), or None.

    Only what the proxy itself reads is checked (the upstream judges the rest): the messages of a
    chat, and every number that sizes the reservation.
    """
    messages = body.get("messages")
    if route.kind == "chat" and messages is not None and not isinstance(messages, list):
        return f"messages: {_shown(messages)} is not valid: expected a list of messages"
    if route.kind == "response":
        return _response_body_problem(body)
    if route.api == "openai":
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            if value is not None and not (_whole(value) and 0 <= value <= MAX_OUTPUT_TOKENS):
                return (
                    f"{name}: {_shown(value)} is not valid: expected an integer from 0 to {MAX_OUTPUT_TOKENS}"
                )
        n = body.get("n")
        if n is not None and not (_whole(n) and 1 <= n <= MAX_CHOICES):
            return f"n: {_shown(n)} is not valid: expected an integer from 1 to {MAX_CHOICES}"
    else:
        options = body.get("options")
        if options is not None and not isinstance(options, dict):
            return f"options: {_shown(options)} is not valid: expected an object"
        value = options.get("num_predict") if isinstance(options, dict) else None
        # Ollama: -1 generates without limit, -2 until the context is full.
        if value is not None and not (_whole(value) and -2 <= value <= MAX_OUTPUT_TOKENS):
            return (
                f"options.num_predict: {_shown(value)} is not valid: expected an integer from -2 to "
                f"{MAX_OUTPUT_TOKENS}"
            )
    return None


def _response_body_problem(body: dict[str, Any]) -> str | None:
    """What :func:`body_problem` checks of a Responses API body: ``input``, ``instructions`` and
    ``max_output_tokens`` (with the range of ``max_tokens``)."""
    items = body.get("input")
    if items is not None and not isinstance(items, str | list):
        return f"input: {_shown(items)} is not valid: expected a string or a list of input items"
    for i, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict):
            return f"input[{i}]: {_shown(item)} is not valid: expected an input item (an object)"
        content = item.get("content")
        if content is not None and not isinstance(content, str | list):
            return (
                f"input[{i}].content: {_shown(content)} is not valid: expected a string or a list of "
                "content parts"
            )
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        return f"instructions: {_shown(instructions)} is not valid: expected a string"
    value = body.get("max_output_tokens")
    if value is not None and not (_whole(value) and 0 <= value <= MAX_OUTPUT_TOKENS):
        return (
            f"max_output_tokens: {_shown(value)} is not valid: expected an integer from 0 to "
            f"{MAX_OUTPUT_TOKENS}"
        )
    return None


def _shown(value: Any) -> str:
    text = (
        json.dumps(value)
        if isinstance(value, str | int | float | bool) or value is None
        else type(value).__name__
    )
    return text if len(text) <= 40 else text[:37] + "..."


def _text_chars(value: Any) -> int:
    """Characters of text in a prompt, message content or input (strings, lists of them, content
    parts with ``text``); token-id arrays count one token (four characters) per id."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return CHARS_PER_TOKEN  # a token id
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    if isinstance(value, dict):
        return _text_chars(value.get("text")) + _text_chars(value.get("content"))
    return 0


def _item_chars(item: Any) -> int:
    """Characters of text in one Responses API input item: a message's ``content`` (a string or
    content parts with ``text``), a tool call's ``arguments``, a tool result's ``output``, a
    reasoning item's ``summary``; images and files count nothing (as in chat messages)."""
    if not isinstance(item, dict):
        return 0
    return sum(_text_chars(item.get(k)) for k in ("content", "text", "arguments", "output", "summary"))


def prompt_chars(route: Route, body: dict[str, Any]) -> int:
    """Characters of prompt text the request sends."""
    if route.kind == "response":
        items = body.get("input")
        text = _text_chars(items) if isinstance(items, str) else sum(map(_item_chars, items or []))
        return text + _text_chars(body.get("instructions"))
    if route.kind == "chat":
        return sum(_text_chars(m) for m in body.get("messages") or [] if isinstance(m, dict))
    if route.kind == "embedding":
        return _text_chars(body.get("input"))
    return _text_chars(body.get("prompt")) + _text_chars(body.get("system"))


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def max_output_tokens(route: Route, body: dict[str, Any]) -> int | None:
    """The most tokens the request lets the model generate, if it says (``max_completion_tokens``,
    ``max_tokens`` times ``n`` choices; the Responses API's ``max_output_tokens``; Ollama's
    ``options.num_predict``)."""
    if route.kind in ("embedding", "show"):
        return 0
    if route.kind == "response":
        return _positive_int(body.get("max_output_tokens"))
    if route.api == "ollama":
        options = body.get("options")
        return _positive_int(options.get("num_predict")) if isinstance(options, dict) else None
    limit = _positive_int(body.get("max_completion_tokens")) or _positive_int(body.get("max_tokens"))
    if limit is None:
        return None
    return limit * (_positive_int(body.get("n")) or 1)


def estimate_tokens(route: Route, body: dict[str, Any], fallback: int) -> int:
    """Tokens to reserve for a request: the prompt (characters / 4, rounded up) plus the most it may
    generate; when the request sets no output limit, ``fallback`` (the job type's estimate) if
    that is larger."""
    prompt = math.ceil(prompt_chars(route, body) / CHARS_PER_TOKEN)
    output = max_output_tokens(route, body)
    if output is None:
        return max(prompt, fallback)
    return max(1, prompt + output)


def wants_stream(route: Route, body: dict[str, Any]) -> bool:
    """Whether the client asked for a streamed answer."""
    if not route.can_stream:
        return False
    stream = body.get("stream", route.stream_default)
    return stream if isinstance(stream, bool) else route.stream_default


def with_stream_usage(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """An OpenAI streaming body that asks for usage, and whether the client had asked for it.

    The upstream then ends its stream with one event carrying ``usage`` and no choices; the proxy
    reads it and drops it again when the client had not asked (:class:`SseRelay`).
    """
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return body, True
    merged = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return {**body, "stream_options": merged}, False


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def openai_usage_tokens(usage: Any) -> int | None:
    """Tokens in an OpenAI ``usage`` object: ``total_tokens``, else prompt plus completion (the
    Responses API's input plus output)."""
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
        return total
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        return _int(usage.get("prompt_tokens")) + _int(usage.get("completion_tokens"))
    if "input_tokens" in usage or "output_tokens" in usage:
        return _int(usage.get("input_tokens")) + _int(usage.get("output_tokens"))
    return None


#: The events that end a Responses API stream, each with the final response (and its ``usage``).
RESPONSE_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_SEQUENCE_NUMBER = re.compile(rb'"sequence_number"\s*:\s*(\d{1,18})\b')


def ollama_usage_tokens(doc: Any) -> int | None:
    """Tokens of an Ollama answer: ``prompt_eval_count`` plus ``eval_count`` (on its final object)."""
    if not isinstance(doc, dict) or ("prompt_eval_count" not in doc and "eval_count" not in doc):
        return None
    return _int(doc.get("prompt_eval_count")) + _int(doc.get("eval_count"))


def usage_from_json(route: Route, raw: bytes) -> int | None:
    """Tokens a non-streamed answer reports using, or None when it does not say."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if route.api == "openai":
        return openai_usage_tokens(doc.get("usage")) if isinstance(doc, dict) else None
    return ollama_usage_tokens(doc)


def _next_separator(buf: bytes | bytearray) -> tuple[int, int]:
    """Start and length of the first blank line ending an SSE event, or (-1, 0)."""
    found = [(i, len(sep)) for sep in (b"\n\n", b"\r\n\r\n") if (i := buf.find(sep)) >= 0]
    return min(found) if found else (-1, 0)


class SseRelay:
    """Reads usage from an OpenAI SSE stream as it passes, event by event.

    :meth:`feed` returns the bytes to send on: every complete event, except the usage-only event
    when ``strip_usage`` (the proxy added ``include_usage``, the client did not ask for it).
    With ``responses`` it reads a Responses API stream instead: the usage is that of the final
    response, in ``response.completed`` (or ``response.incomplete``, ``response.failed``).
    """

    def __init__(self, strip_usage: bool, responses: bool = False) -> None:
        self.strip_usage = strip_usage
        self.responses = responses
        self.tokens: int | None = None
        self.done = False
        """Whether the stream sent its ``[DONE]`` event (a Responses stream: its final event)."""
        self._sequence = -1
        """The last ``sequence_number`` seen in a Responses stream."""
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        """Take a chunk from upstream; return the complete events to forward."""
        self._pending += chunk
        out = bytearray()
        while True:
            start, size = _next_separator(self._pending)
            if start < 0:
                break
            event = bytes(self._pending[: start + size])
            del self._pending[: start + size]
            if self._keep(event):
                out += event
        if len(self._pending) > MAX_PENDING_BYTES:
            out += self._pending
            self._pending.clear()
        return bytes(out)

    def finish(self) -> bytes:
        """What is left when the upstream ends (an event without its closing blank line)."""
        rest = bytes(self._pending)
        self._pending.clear()
        return rest if rest.strip() and self._keep(rest) else b""

    def error_event(self, message: str) -> bytes:
        """The event that tells the client its stream broke (a 502 in OpenAI's error shape, which
        OpenAI SDKs raise as ``APIError``); in a Responses stream also a Responses ``error``
        event (``type``, ``code``, ``message``, ``param``, the next ``sequence_number``)."""
        error = {"message": message, "type": "upstream_error", "code": 502}
        if not self.responses:
            return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
        event = {
            "type": "error",
            "code": "upstream_error",
            "message": message,
            "param": None,
            "sequence_number": self._sequence + 1,
            "error": error,
        }
        return b"event: error\ndata: " + json.dumps(event).encode() + b"\n\n"

    def _keep(self, event: bytes) -> bool:
        data = b"\n".join(
            line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")
        ).strip()
        if self.responses:
            self._response_event(data)
            return True
        if data == b"[DONE]":
            self.done = True
            return True
        if b'"usage"' not in data:
            return True
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return True
        if not isinstance(doc, dict):
            return True
        tokens = openai_usage_tokens(doc.get("usage"))
        if tokens is None:
            return True
        self.tokens = tokens
        # The usage-only event has no choices: drop it for a client that did not ask for it.
        return not (self.strip_usage and not doc.get("choices"))

    def _response_event(self, data: bytes) -> None:
        """Read one Responses API event: its sequence number, and the final response's usage."""
        if found := _SEQUENCE_NUMBER.search(data):
            self._sequence = max(self._sequence, int(found[1]))
        # Only a final event is parsed (text deltas are many and carry no usage).
        if not any(b'"' + name.encode() + b'"' in data for name in RESPONSE_FINAL_EVENTS):
            return
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(doc, dict):
            return
        response = doc.get("response")
        if doc.get("type") in RESPONSE_FINAL_EVENTS and isinstance(response, dict):
            self.done = True
            tokens = openai_usage_tokens(response.get("usage"))
            if tokens is not None:
                self.tokens = tokens


class NdjsonRelay:
    """Reads usage from an Ollama NDJSON stream; chunks pass through unchanged."""

    def __init__(self) -> None:
        self.tokens: int | None = None
        self.done = False
        """Whether the stream sent its final ``"done": true`` object."""
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        """Take a chunk from upstream; return it to forward as it is."""
        self._pending += chunk
        end = self._pending.rfind(b"\n")
        if end >= 0:
            for line in bytes(self._pending[:end]).splitlines():
                self._line(line)
            del self._pending[: end + 1]
        if len(self._pending) > MAX_PENDING_BYTES:
            self._pending.clear()
        return chunk

    def finish(self) -> bytes:
        """Parse a last line without a newline; nothing more to forward."""
        self._line(bytes(self._pending))
        self._pending.clear()
        return b""

    def _line(self, line: bytes) -> None:
        if b'"done"' not in line:
            return  # only the final object carries the counts: skip parsing the rest
        try:
            doc = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(doc, dict) and doc.get("done") is True:
            self.done = True
            self.tokens = ollama_usage_tokens(doc)
