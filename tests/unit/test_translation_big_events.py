"""One engine event bigger than SseSplitter's default 8 MiB (a long tool argument, a big paste
echoed) through both translated streams: kept whole up to sse.TRANSLATED_EVENT_LIMIT, and past
it the stream ends with an error naming why, never a silent normal end (review 23t: it was
dropped and the answer ended `end_turn`/`stop` with no text)."""

from __future__ import annotations

import time
from typing import Any

import orjson

from vramgate.api.anthropic_stream import MessageStream
from vramgate.api.ollama_stream import NdjsonStream
from vramgate.sse import TOO_LONG, TRANSLATED_EVENT_LIMIT


def _engine(size: int) -> bytes:
    def event(chunk: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    return (
        event({"choices": [{"index": 0, "delta": {"content": "x" * size}}]})
        + event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        + b"data: [DONE]\n\n"
    )


def _fed(stream: MessageStream | NdjsonStream, data: bytes) -> bytes:
    step = 1 << 20
    return b"".join(stream.feed(data[i : i + step]) for i in range(0, len(data), step)) + (
        stream.end()
    )


def _anthropic(data: bytes) -> list[dict[str, Any]]:
    raw = _fed(MessageStream("m", []), data)
    return [orjson.loads(block.split(b"\ndata: ")[1]) for block in raw.split(b"\n\n") if block]


def _ollama(data: bytes) -> list[dict[str, Any]]:
    raw = _fed(NdjsonStream("m", time.perf_counter(), generate=False), data)
    return [orjson.loads(line) for line in raw.splitlines()]


def test_a_9_mib_delta_is_carried_whole_by_both() -> None:
    size = 9 << 20
    events = _anthropic(_engine(size))
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert len(text) == size and events[-1]["type"] == "message_stop"
    lines = _ollama(_engine(size))
    assert len("".join(x["message"]["content"] for x in lines if "message" in x)) == size
    assert lines[-1]["done"] is True


def test_an_event_past_the_limit_ends_both_streams_with_an_error_naming_it() -> None:
    # The splitter gives up on an event still unfinished past the limit (one whose end comes in
    # the same piece as its last bytes is carried): 2 MiB more, fed 1 MiB at a time, is.
    data = _engine(TRANSLATED_EVENT_LIMIT + (2 << 20))
    events = _anthropic(data)
    assert events[-1] == {"type": "error", "error": {"type": "api_error", "message": TOO_LONG}}
    assert "message_stop" not in [e["type"] for e in events]
    lines = _ollama(data)
    assert lines[-1] == {"error": TOO_LONG}
    assert not any(x.get("done") for x in lines)
