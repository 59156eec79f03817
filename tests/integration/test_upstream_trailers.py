"""A chunked answer's trailer section (after its last chunk): its fields are dropped (the relay
hands on no trailers), its bytes are held to _HEAD_LIMIT as the head's are, so an endless
trailer cannot fill the gateway's memory."""

from __future__ import annotations

import pytest

from tests.integration.scripted import LOOPS, Peer, Scripted, run
from vramgate.upstream import Broken, UpstreamPool

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
    kept = out[0]
    assert isinstance(kept, Broken) and "trailer" in str(kept), f"{kept} bytes of fields kept"


@pytest.mark.parametrize("loop", LOOPS)
def test_a_small_trailer_is_dropped_and_the_answer_kept(loop):
    """A trailer within the bound: the body arrives whole, the trailer's fields are not added
    to the answer's headers, and the connection is reused."""

    def script(peer: Peer) -> None:
        while peer.read_request() is not None:
            peer.send([HEAD + b"2\r\nok\r\n0\r\n" + LINE * 8 + b"\r\n"])

    out: list[object] = []

    async def main() -> None:
        pool = UpstreamPool(read_timeout_s=10)
        try:
            for _ in range(2):
                answer = await pool.post("127.0.0.1", engine.port, "/x", b"{}")
                out.append((await answer.read(), [n for n, _ in answer.raw_headers]))
                answer.release()
        finally:
            pool.close()

    with Scripted(script) as engine:
        run(loop, main)
        assert engine.connections == 1, engine.connections
    assert out == [(b"ok", [b"content-type", b"transfer-encoding"])] * 2, out
