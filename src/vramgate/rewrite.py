"""Mending answers from engines that stray from OpenAI's API before a client sees them: the model
named as the client named it, streams that end with `data: [DONE]`, errors in OpenAI's shape, and
an event stream sent where JSON was asked for. Only engines that need it pay for it.
"""

from __future__ import annotations

from typing import Any

import orjson

from vramgate.errors import error_body
from vramgate.sse import SseSplitter

DONE = b"data: [DONE]\n\n"
_EVENT_END = b"\n\n"
MAX_PENDING = 8 << 20  # bytes of one event kept for mending; past it, passed on unmended
_JSON = b"application/json"
_ERROR_TYPES = {404: "not_found_error"}


class AnswerFix:
    """One request's mending. `whole` takes a complete answer; `chunk` and `end` a stream's
    pieces, which may split an event anywhere (kept until its blank line arrives)."""

    def __init__(self, model: str, *, add_done: bool) -> None:
        self.model = model
        self.add_done = add_done
        self.seen_done = False
        self.events = SseSplitter(MAX_PENDING)

    def whole(self, status: int, content_type: bytes, content: bytes) -> tuple[int, bytes, bytes]:
        """The answer's status, content type and body as the client should get them."""
        if status >= 400:
            return status, _JSON, orjson.dumps(_openai_error(status, content))
        if content_type.startswith(b"text/event-stream"):
            # Asked without `stream`, answered as a stream anyway: the final object is the answer.
            final = _final_response(content)
            if final is not None:
                return status, _JSON, orjson.dumps(self._named(final))
            return status, content_type, content
        try:
            payload = orjson.loads(content)
        except orjson.JSONDecodeError:
            return status, content_type, content
        return status, content_type, orjson.dumps(self._named(payload))

    def chunk(self, data: bytes) -> bytes:
        """The complete events so far, mended; a partial one waits for the rest (sse.py)."""
        events, raw = self.events.feed(data)
        return b"".join(self._event(e) for e in events) + raw

    def end(self) -> bytes:
        """What is still owed when the engine's stream ends."""
        rest = self.events.rest()
        rest = self._event(rest) if rest else b""
        if self.add_done and not self.seen_done:
            rest += DONE
        return rest

    def _event(self, event: bytes) -> bytes:
        lines = event.split(b"\n")
        for i, line in enumerate(lines):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                self.seen_done = True
                continue
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            lines[i] = b"data: " + orjson.dumps(self._named(payload))
        return b"\n".join(lines) + _EVENT_END

    def _named(self, payload: Any) -> Any:
        if isinstance(payload, dict):
            if "model" in payload:
                payload["model"] = self.model
            inner = payload.get("response")
            if isinstance(inner, dict) and "model" in inner:
                inner["model"] = self.model
        return payload


def _final_response(stream: bytes) -> dict[str, Any] | None:
    """The `response` of a Responses stream's last `response.completed` event."""
    final = None
    for line in stream.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        try:
            event = orjson.loads(line[5:].strip())
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("type") == "response.completed":
            final = event.get("response")
    return final if isinstance(final, dict) else None


def _openai_error(status: int, content: bytes) -> dict[str, Any]:
    """`{"detail": ...}` (FastAPI's shape) or anything else, as `{"error": {...}}`."""
    try:
        payload = orjson.loads(content)
    except orjson.JSONDecodeError:
        payload = content.decode(errors="replace")
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return payload  # already OpenAI's shape
    if isinstance(payload, dict) and "detail" in payload:
        detail = payload["detail"]
        message = detail if isinstance(detail, str) else orjson.dumps(detail).decode()
    else:
        message = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return error_body(f"the engine answered {status}: {message}", kind, "engine_error")
