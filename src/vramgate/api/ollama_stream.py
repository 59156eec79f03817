"""OpenAI's chat (or completions) stream as Ollama's NDJSON: a state machine fed the engine's
SSE bytes, split anywhere, that emits Ollama's lines. No I/O.

Every kind of delta is carried: text (`message.content`, or /api/generate's `response`),
reasoning (`reasoning_content` or `reasoning`: `message.thinking`, or generate's `thinking`),
tool calls by their index however their deltas interleave (one line once their arguments are
whole, as Ollama sends them), usage and the engine's timings (the `done` line's counts), the
finish reason (`done_reason`) and an error mid-stream (an `{"error": ...}` line, the last).
"""

from __future__ import annotations

from typing import Any

import orjson

from vramgate.api.checks import reasoning_of, text
from vramgate.api.ollama_convert import done_reason, error_line, now_iso, stats, tool_calls
from vramgate.sse import TranslatedStream, chunk_of


class NdjsonStream(TranslatedStream):
    """One line per piece of text or thinking, tool calls in one line once whole, then the
    `done` line with the counts. `generate`: /api/generate's lines, else /api/chat's;
    `is_chat`: the engine streams chat chunks (else completions' `text`)."""

    def __init__(self, model: str, began: float, *, generate: bool, is_chat: bool = True) -> None:
        self.model, self.began = model, began
        self.generate, self.is_chat = generate, is_chat
        super().__init__()
        self.calls: dict[int, dict[str, str]] = {}  # by OpenAI's index: name, arguments
        self.usage: dict[str, Any] = {}
        self.timings: dict[str, Any] | None = None
        self.finish: Any = "stop"
        self.done = False

    def keepalive(self) -> bytes:
        """A line that adds nothing (sent while the engine starts)."""
        return self._line("", "", None)

    def _line(self, content: str, thinking: str, calls: list[dict[str, Any]] | None) -> bytes:
        line: dict[str, Any] = {"model": self.model, "created_at": now_iso()}
        if self.generate:
            line["response"] = content
            if thinking:
                line["thinking"] = thinking
        else:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            line["message"] = message
        line["done"] = False
        return orjson.dumps(line) + b"\n"

    def _event(self, event: bytes) -> bytes:
        if self.done:  # an error ended it: nothing may follow
            return b""
        chunk = chunk_of(event)
        if chunk is None:
            return b""
        if (error := chunk.get("error")) is not None:
            message = error.get("message") if isinstance(error, dict) else error
            return self._fail(message if isinstance(message, str) else "the engine failed")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if isinstance(chunk.get("timings"), dict):
            self.timings = chunk["timings"]
        out = b""
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # Ollama has one answer: the first choice's
            delta = choice.get("delta") if self.is_chat else {"content": choice.get("text")}
            if isinstance(delta, dict):
                out += self._delta(delta)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _fail(self, message: str) -> bytes:
        """An error line ends the stream: nothing is sent after it."""
        if self.done:
            return b""
        self.done = True
        return error_line(message)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        content, thinking = text(delta.get("content")), reasoning_of(delta)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if not isinstance(call, dict):
                continue
            position = call.get("index", 0)
            held = self.calls.setdefault(position if isinstance(position, int) else 0,
                                         {"name": "", "arguments": ""})  # fmt: skip
            function = call.get("function")
            if isinstance(function, dict):
                held["name"] += text(function.get("name"))
                held["arguments"] += text(function.get("arguments"))
        return self._line(content, thinking, None) if content or thinking else b""

    def _finish(self) -> bytes:
        if self.done:
            return b""
        self.done = True
        out = b""
        if self.calls:
            calls = tool_calls([{"function": c} for _, c in sorted(self.calls.items())])
            out += self._line("", "", calls)
        line: dict[str, Any] = {"model": self.model, "created_at": now_iso()}
        if self.generate:
            line["response"] = ""
        else:
            line["message"] = {"role": "assistant", "content": ""}
        line.update(done=True, done_reason=done_reason(self.finish),
                    **stats(self.usage, self.began, self.timings))  # fmt: skip
        return out + orjson.dumps(line) + b"\n"
