"""Server-sent events cut from a byte stream that may split them anywhere: complete events out,
the rest kept for the next piece. Line ends may be LF, CRLF or CR (the SSE spec allows all
three): they come out as LF. Only new bytes are searched, so an event split into many pieces
costs linear time; one that never ends is handed on whole past `limit` bytes."""

from __future__ import annotations

from typing import Any

import orjson

EVENT_END = b"\n\n"
# One event a translation (Anthropic's, Ollama's) must hold whole to parse: past this it cannot
# be carried, and the stream ends with an error naming why. A delta this big is a whole answer.
TRANSLATED_EVENT_LIMIT = 64 << 20
TOO_LONG = (
    f"an event from the engine over {TRANSLATED_EVENT_LIMIT >> 20} MiB: the answer stops here"
)


class SseSplitter:
    def __init__(self, limit: int = 8 << 20) -> None:
        self.limit = limit
        self.pending = bytearray()  # an event's start, until its blank line arrives
        self.cr = b""  # a CR that ended the last piece: half of a CRLF, maybe

    def feed(self, data: bytes) -> tuple[list[bytes], bytes]:
        """The complete events in `data` and what came before it (each without its blank line),
        and the bytes of an event too long to keep (passed on as they are; else empty)."""
        data = self.cr + data
        self.cr = b""
        if data.endswith(b"\r"):
            self.cr, data = b"\r", data[:-1]
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        start = max(0, len(self.pending) - 1)
        self.pending += data
        cut = self.pending.rfind(EVENT_END, start)
        if cut < 0:
            if len(self.pending) <= self.limit:
                return [], b""
            raw, self.pending = bytes(self.pending), bytearray()
            return [], raw
        events = bytes(self.pending[:cut]).split(EVENT_END)
        del self.pending[: cut + 2]
        return [e for e in events if e], b""

    def rest(self) -> bytes:
        """What is left at the end of the stream (an event with no blank line after it)."""
        rest = bytes(self.pending) + self.cr
        self.pending, self.cr = bytearray(), b""
        return rest if rest.strip() else b""


def data_lines(event: bytes) -> bytes | None:
    """The data of one event (its `data:` lines joined), or None if it has none."""
    found = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(found) if found else None


def chunk_of(event: bytes) -> dict[str, Any] | None:
    """An event's data as the JSON object an OpenAI stream sends, or None where it holds none
    (no data, `[DONE]`, not JSON, not an object): what the translated streams read."""
    data = data_lines(event)
    if data is None or data.strip() == b"[DONE]":
        return None
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return chunk if isinstance(chunk, dict) else None


class TranslatedStream:
    """What both translated streams (Anthropic's events, Ollama's lines) do with an engine's
    OpenAI stream: events split out as they complete, each one `_event`'s; one event past
    TRANSLATED_EVENT_LIMIT ends the answer with `_fail`; the stream's end is `_finish`'s."""

    def __init__(self) -> None:
        self.events = SseSplitter(TRANSLATED_EVENT_LIMIT)

    def feed(self, data: bytes) -> bytes:
        events, too_long = self.events.feed(data)
        out = b"".join(self._event(e) for e in events)
        return out + self._fail(TOO_LONG) if too_long else out

    def end(self) -> bytes:
        out = self._event(rest) if (rest := self.events.rest()) else b""
        return out + self._finish()

    def _event(self, event: bytes) -> bytes:
        raise NotImplementedError

    def _fail(self, message: str) -> bytes:
        raise NotImplementedError

    def _finish(self) -> bytes:
        raise NotImplementedError
