"""SseSplitter hands on each event as soon as its blank line is in, wherever the pieces were cut:
a mutation run (issue 23) found that an event whose blank line is split across two pieces
("\n" | "\n") waited for the next event unnoticed, since every test only compared whole outputs."""

from __future__ import annotations

import pytest

from vramgate.sse import SseSplitter

STREAM = b'event: a\ndata: {"x": 1}\n\nevent: b\r\ndata: 2\r\n\r\ndata: [DONE]\n\n'
EVENTS = [b'event: a\ndata: {"x": 1}', b"event: b\ndata: 2", b"data: [DONE]"]


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_each_event_comes_out_the_moment_its_blank_line_is_in(cut):
    splitter = SseSplitter()
    first, raw1 = splitter.feed(STREAM[:cut])
    second, raw2 = splitter.feed(STREAM[cut:])
    assert raw1 == raw2 == b""
    assert first + second == EVENTS
    # Whatever was whole in the first piece came out with it.
    whole_in_first = STREAM[:cut].replace(b"\r\n", b"\n").count(b"\n\n")
    assert len(first) == whole_in_first, (cut, first)
    assert splitter.rest() == b""


def test_one_byte_at_a_time_each_event_at_its_last_byte():
    splitter = SseSplitter()
    seen = []
    for i in range(len(STREAM)):
        events, _ = splitter.feed(STREAM[i : i + 1])
        seen += [(i, e) for e in events]
    ends = [STREAM.index(b"\n\n") + 1, STREAM.index(b"\r\n\r\n") + 3, len(STREAM) - 1]
    assert seen == list(zip(ends, EVENTS, strict=True)), seen
