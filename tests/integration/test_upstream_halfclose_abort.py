"""An engine that reads a request whole, half-closes (shutdown(SHUT_WR): a FIN) and then closes
abortively (SO_LINGER 0: a reset) without answering sends what the idle-close race sends: a FIN,
then a reset for bytes that met it. TCP alone cannot tell the two apart (the engine's
acknowledgement of the request would, but a TCP proxy between acknowledges on its behalf:
tests/integration/test_upstream_review.py's races run through one), and the race is what every
keep-alive client meets, so the upstream client takes FIN-then-reset for "never read" and sends
the request once more (upstream.py's docstring, docs/scheduling.md). This test pins that
documented behaviour: the engine reads the request twice, and the second answer is the
client's. It fails if the behaviour changes either way: a fix that tells the two apart (then
the request is read once and the client gets Broken) must update this test and the docs."""

from __future__ import annotations

import socket
import time

import pytest

from tests.integration.scripted import LOOPS, Peer, Scripted, framed, run
from vramgate.upstream import Broken, NeverSent, UpstreamPool

OK = framed(b"ok", "length")


@pytest.mark.parametrize("loop", LOOPS)
def test_a_request_read_whole_then_half_closed_and_aborted_is_sent_again_as_documented(loop):
    """Read whole, then FIN, then reset: taken for the idle-close race, so sent once more on a
    new connection, which answers it (the documented assumption, not a proof)."""

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
        assert engine.requests == 3, f"the second request was read {engine.requests - 1} times"
        assert engine.connections == 2, engine.connections
    assert out == [b"ok"], out
