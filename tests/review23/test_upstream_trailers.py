"""Review 23: an answer's trailer section (after a chunked body's last chunk) is head too, but
is not held to _HEAD_LIMIT: the parser's on_header keeps appending trailer fields to the
answer's headers for as long as the engine sends them, so an endless trailer fills the
gateway's memory, which the head limit was made to prevent."""

from __future__ import annotations

import pytest

from tests.integration.scripted import LOOPS, Peer, Scripted, run
from vramgate.upstream import _HEAD_LIMIT, Broken, UpstreamPool

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
TRAILER_BYTES = 8 << 20  # 128 times the head limit
LINE = b"X-T: " + b"y" * 1000 + b"\r\n"


@pytest.mark.parametrize("loop", LOOPS)
def test_an_endless_trailer_is_refused_not_buffered(loop):
    """The engine sends a whole body, then 8 MiB of trailer fields: the client must refuse the
    answer (Broken) or drop them, rather than keep every field it is sent."""

    def script(peer: Peer) -> None:
        if peer.read_request() is None:
            return
        peer.send([HEAD + b"2\r\nok\r\n0\r\n"])
        for _ in range(TRAILER_BYTES // len(LINE)):
            peer.send([LINE])
        peer.send([b"\r\n"])

    out: list[object] = []

    async def main() -> None:
        pool = UpstreamPool(read_timeout_s=10)
        try:
            answer = await pool.post("127.0.0.1", engine.port, "/x", b"{}")
            try:
                await answer.read()
                out.append(sum(len(n) + len(v) for n, v in answer.raw_headers))
            except Broken as exc:
                out.append(exc)
            answer.release()
        except Broken as exc:
            out.append(exc)
        finally:
            pool.close()

    with Scripted(script) as engine:
        run(loop, main)
    # Fixed either way: the answer refused (Broken), or its trailer fields kept within the bound.
    kept = out[0]
    assert isinstance(kept, Broken) or (isinstance(kept, int) and kept <= 2 * _HEAD_LIMIT), (
        f"{kept} bytes of header fields kept"
    )
