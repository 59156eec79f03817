"""OpenAI's chat completion stream as Anthropic's Messages stream: a state machine fed the
engine's SSE bytes, split anywhere, that emits Anthropic's events. No I/O.

Every kind of delta an engine sends is carried: text (`text` blocks), reasoning
(`reasoning_content`, or `reasoning` as newer vLLM names it: `thinking` blocks), tool calls by
their index however their deltas interleave (`tool_use` blocks), usage (chunks whose `choices`
is empty), the finish reason (message_delta's stop_reason) and an error mid-stream (an `error`
event, after which nothing more is sent).

Anthropic's blocks come one after another (a client appends to the last one it was told of), but
an engine may interleave parallel calls (index 0, 1, 0, 1), send a call's name in pieces or its id
on a later delta, and write arguments that are not JSON. So text and reasoning stream live until
the first tool call; each call is held, and from then on whatever follows too, and all of it is
sent as whole blocks, in the order it began, when the stream ends: nothing is lost or misplaced,
and a call's arguments are checked whole first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from vramgate.api.anthropic_convert import message_id, stop_reason, tool_id
from vramgate.api.checks import count, reasoning_of, text, tool_arguments
from vramgate.sse import TranslatedStream, chunk_of


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_event(kind: str, message: str) -> bytes:
    return sse("error", {"type": "error", "error": {"type": kind, "message": message}})


@dataclass
class Call:
    """One tool call as its deltas arrive (OpenAI sends id and name first, then the arguments
    in pieces)."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def block(self) -> dict[str, Any]:
        return {"type": "tool_use", "id": self.id or tool_id(), "name": self.name, "input": {}}

    def json(self) -> str:
        """The arguments as a JSON object, as the non-streamed answer has them: what is not
        one is kept as `{"_raw": text}` (or `_value`)."""
        return orjson.dumps(tool_arguments("".join(self.arguments))).decode()


@dataclass
class Held:
    """A block waiting for the open tool call's block to close: text, thinking or a call."""

    kind: str
    text: list[str] = field(default_factory=list)
    call: Call | None = None


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        error = error.get("message")
    return error if isinstance(error, str) and error else "the engine failed"


class MessageStream(TranslatedStream):
    """message_start once; then content blocks (content_block_start, deltas,
    content_block_stop), each run of text or reasoning and each tool call its own; then
    message_delta with the stop reason and usage, and message_stop. `feed` takes bytes as they
    come, split anywhere; `end` closes what is open."""

    def __init__(self, model: str, stops: list[str]) -> None:
        self.model, self.stops = model, stops
        super().__init__()
        self.started = self.finished = False
        self.index = -1  # the last block's index
        self.open: str | None = None  # the open block's kind: text, thinking, tool_use
        self.calls: dict[int, Call] = {}  # every call by its OpenAI index, sent or held
        self.held: list[Held] = []
        self.finish: dict[str, Any] = {}
        self.usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0}

    def start(self) -> bytes:
        """message_start, if not sent yet (also sent before pings, while the engine starts)."""
        if self.started:
            return b""
        self.started = True
        message = {"id": message_id(), "type": "message", "role": "assistant", "content": [],
                   "model": self.model, "stop_reason": None, "stop_sequence": None,
                   "usage": dict(self.usage)}  # fmt: skip
        return sse("message_start", {"type": "message_start", "message": message})

    def _event(self, event: bytes) -> bytes:
        if self.finished:  # an error ended it: nothing may follow
            return b""
        chunk = chunk_of(event)
        if chunk is None:
            return b""
        out = self.start()
        if chunk.get("error") is not None:  # the gateway's own, or the engine's
            return out + self._fail(_error_message(chunk["error"]))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = {"input_tokens": count(usage.get("prompt_tokens")),
                          "output_tokens": count(usage.get("completion_tokens"))}  # fmt: skip
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # Anthropic has one answer: the first choice's
            delta = choice.get("delta")
            if isinstance(delta, dict):
                out += self._delta(delta)
            if choice.get("finish_reason"):
                self.finish = choice
        return out

    def _fail(self, message: str) -> bytes:
        """An error event ends the stream: nothing is sent after it."""
        if self.finished:
            return b""
        out = self.start() + self._close()
        self.finished = True
        return out + error_event("api_error", message)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        out = b""
        if thinking := reasoning_of(delta):
            out += self._piece("thinking", thinking)
        if content := text(delta.get("content")):
            out += self._piece("text", content)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                out += self._call(call)
        return out

    def _piece(self, kind: str, piece: str) -> bytes:
        """Text or reasoning: streamed into its block, or held behind an open tool call."""
        if self.held:
            if not self.held or self.held[-1].kind != kind:
                self.held.append(Held(kind))
            self.held[-1].text.append(piece)
            return b""
        out = b""
        if self.open != kind:
            out += self._open({"type": kind, kind: ""} | _signature(kind), kind)
        return out + self._delta_event(_delta_of(kind, piece))

    def _call(self, delta: dict[str, Any]) -> bytes:
        """A tool call's delta: held, its block sent whole when the stream ends. Its name and
        id may come in any delta, and its arguments must be checked whole (a small model's may
        not be JSON, which the SDK's stream fails on), so no part of it is sent before then."""
        position = delta.get("index", 0)
        if not isinstance(position, int):
            position = 0
        function = delta.get("function")
        function = function if isinstance(function, dict) else {}
        call = self.calls.get(position)
        if call is None:
            call = self.calls[position] = Call()
            self.held.append(Held("tool_use", call=call))
        call.id = call.id or text(delta.get("id"))
        call.name += text(function.get("name"))
        if arguments := text(function.get("arguments")):
            call.arguments.append(arguments)
        return b""

    def _open(self, block: dict[str, Any], kind: str) -> bytes:
        out = self._close()
        self.index += 1
        self.open = kind
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        return out + sse("content_block_start", start)

    def _delta_event(self, delta: dict[str, Any]) -> bytes:
        event = {"type": "content_block_delta", "index": self.index, "delta": delta}
        return sse("content_block_delta", event)

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return sse("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _flush(self) -> bytes:
        """What was held, each a whole block, in the order it began."""
        out = self._close()
        for held in self.held:
            if held.call is not None:
                out += self._open(held.call.block(), "tool_use")
                out += self._delta_event(_arguments(held.call.json()))
            else:
                kind = held.kind
                out += self._open({"type": kind, kind: ""} | _signature(kind), kind)
                out += self._delta_event(_delta_of(kind, "".join(held.text)))
        self.held = []
        return out + self._close()

    def _finish(self) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        out = self.start() + self._flush()
        reason, sequence = stop_reason(self.finish, self.stops, has_calls=bool(self.calls))
        delta = {"type": "message_delta",
                 "delta": {"stop_reason": reason, "stop_sequence": sequence},
                 "usage": self.usage}  # fmt: skip
        return out + sse("message_delta", delta) + sse("message_stop", {"type": "message_stop"})


def _signature(kind: str) -> dict[str, str]:
    """A thinking block's signature: Anthropic's proves that Claude wrote it; a local model's
    has none, and the SDK's ThinkingBlock requires the field, so it is empty."""
    return {"signature": ""} if kind == "thinking" else {}


def _delta_of(kind: str, text: str) -> dict[str, str]:
    return {"type": f"{kind}_delta", kind: text}


def _arguments(piece: str) -> dict[str, str]:
    return {"type": "input_json_delta", "partial_json": piece}
