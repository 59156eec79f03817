"""Review 23: FIN-then-reset is taken as proof that a request was never read (upstream.py's
docstring), but an engine that read the request whole, half-closed (shutdown(SHUT_WR): a
FIN) and then closed abortively (SO_LINGER 0: a reset) sends the same two segments: the
request is sent a second time and the engine reads it twice."""

from __future__ import annotations

import socket
import time

import pytest

from tests.integration.scripted import LOOPS, Peer, Scripted, framed, run
from vramgate.upstream import Broken, NeverSent, UpstreamPool

OK = framed(b"ok", "length")


@pytest.mark.parametrize("loop", LOOPS)
def test_a_request_read_whole_then_half_closed_and_aborted_is_not_sent_again(loop):
    def script(peer: Peer) -> None:
        if peer.index == 1:
            peer.read_request()
            peer.send([OK])
            peer.read_request()  # read whole: it may have run
            peer.sock.shutdown(socket.SHUT_WR)  # FIN
            time.sleep(0.005)
            peer.reset()  # then an abortive close: RST
            return
        while peer.read_request() is not None:
            peer.send([OK])

    out: list[object] = []

    async def main() -> None:
        pool = UpstreamPool(read_timeout_s=5)
        try:
            first = await pool.post("127.0.0.1", engine.port, "/x", b"{}")
            await first.read()
            first.release()
            try:
                second = await pool.post("127.0.0.1", engine.port, "/x", b"{}")
                out.append(await second.read())
                second.release()
            except (Broken, NeverSent) as exc:
                out.append(exc)
        finally:
            pool.close()

    with Scripted(script) as engine:
        run(loop, main)
        assert engine.requests == 2, f"the second request was read {engine.requests - 1} times"
    assert isinstance(out[0], Broken), out[0]
