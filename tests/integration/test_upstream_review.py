"""Fresh-eyes review of issue 23 (upstream client): defects reproduced with raw scripted engines.
Each test failed while its defect existed. The rule they hold (upstream.py's docstring): only a
FIN followed by a reset proves a written request unread; a reset alone is ambiguous (a close
with it unread, or an abortive close after reading it whole) and gives Broken, never a resend."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tests.integration.scripted import LOOPS, Link, Peer, Scripted, framed, run
from vramgate.upstream import Broken, NeverSent, UpstreamPool

OK = framed(b"ok", "length")
LINK_S = 0.015  # the slow link's delay: the engine's FIN reaches the client after its write


def _serve_rest(peer: Peer) -> None:
    while peer.read_request() is not None:
        peer.send([OK])


async def _two(port: int, between=None) -> tuple[bytes, bytes | BaseException]:
    pool = UpstreamPool(read_timeout_s=5)
    try:
        first = await pool.post("127.0.0.1", port, "/x", b'{"n": 1}')
        body = await first.read()
        first.release()
        if between is not None:
            await between()
        try:
            second = await pool.post("127.0.0.1", port, "/x", b'{"n": 2}')
            got = await second.read()
            second.release()
            return body, got
        except Broken as exc:
            return body, exc
    finally:
        pool.close()


def _run_two(loop: str, port: int, between=None):
    out = []

    async def main() -> None:
        out.append(await _two(port, between))

    run(loop, main)
    return out[0]


# -- 1. a request read whole, then an abortive close (RST) at once: sent a second time ---------


@pytest.mark.parametrize("loop", LOOPS)
def test_read_whole_then_reset_at_once_is_never_sent_again(loop):
    """The engine read the second request whole (it may run it) and closed with SO_LINGER 0
    within RACE_S, answering nothing. A reset is taken as proof of 'never read', so the
    request goes again on a new connection and the engine reads it a second time."""

    def script(peer: Peer) -> None:
        if peer.index == 1:
            peer.read_request()
            peer.send([OK])
            peer.read_request()  # read in full
            peer.reset()  # abortive close at once (SO_LINGER 0): an RST, nothing unread
            return
        _serve_rest(peer)

    with Scripted(script) as engine:
        first, second = _run_two(loop, engine.port)
        assert first == b"ok"
        assert engine.requests == 2, f"the request read whole was read {engine.requests - 1} times"
        assert isinstance(second, Broken), second


# -- 2. stray bytes on an idle kept-alive connection: the next request is written into it -------


@pytest.mark.parametrize("loop", LOOPS)
def test_stray_bytes_on_an_idle_connection_do_not_fail_the_next_request(loop):
    """After a whole answer the engine sends stray bytes on the idle connection and keeps it
    open. The event loop reads them (the parser fails, conn.error is set), so is_quiet()'s poll
    sees an empty socket; the next request is written into the dead connection and fails with
    Broken (a 502) at once although it could have gone on a fresh connection."""

    def script(peer: Peer) -> None:
        if peer.index == 1:
            peer.read_request()
            peer.send([OK])
            time.sleep(0.01)
            peer.send([b"garbage\r\n"])
        _serve_rest(peer)

    async def between() -> None:
        await asyncio.sleep(0.2)

    with Scripted(script) as engine:
        first, second = _run_two(loop, engine.port, between)
        assert first == b"ok"
        assert second == b"ok", second


# -- 3. bytes after the end of an answer are taken into its body -------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_bytes_after_an_answer_are_not_part_of_its_body(loop):
    """Content-Length says 2; what follows in the same segment (here a second whole response,
    as an engine with a stale answer or a smuggled one sends) is appended to the body read."""

    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send([OK + framed(b"SMUGGLED", "length")])
        _serve_rest(peer)

    with Scripted(script) as engine:
        out = []

        async def main() -> None:
            pool = UpstreamPool(read_timeout_s=5)
            for _ in range(2):
                answer = await pool.post("127.0.0.1", engine.port, "/x", b"{}")
                out.append(await answer.read())
                answer.release()
            pool.close()

        run(loop, main)
        assert out == [b"ok", b"ok"], out
        assert engine.connections == 2  # the connection with extra bytes was not reused


# -- 5. the idle-close race seen late by a busy loop: the unread request is still sent again --


def _idle_close_soon(refuse: Link | None = None):
    """The engine answers the first request, then closes the idle connection (a FIN, nothing
    unread) while the next request is on its way across the link; later connections answer."""

    def script(peer: Peer) -> None:
        if peer.index == 1:
            peer.read_request()
            peer.send([OK])
            time.sleep(LINK_S / 2)
            if refuse is not None:
                refuse.refuse = True  # going: new connections are refused from now on
            peer.sock.close()
            return
        _serve_rest(peer)

    return script


@pytest.mark.parametrize("loop", LOOPS)
def test_a_reset_seen_late_by_a_busy_loop_still_retries_the_unread_request(loop):
    """The engine's FIN, then the reset our request met, both arrive while the gateway's loop
    is busy for 100 ms just after the write (another request's JSON, a big answer). The proof
    (FIN, then a reset: kept in SO_ERROR) does not depend on when the loop looks: the request
    goes once more on a new connection. Before: lost_at/RACE_S measured the loop's lateness and
    the never-read request failed with a 502."""

    async def between() -> None:
        # blocks the loop right after the next write (the first thing run once post() yields)
        asyncio.get_running_loop().call_soon(time.sleep, 0.1)

    for _ in range(5):
        with Scripted(_idle_close_soon()) as engine, Link(engine.port, LINK_S) as link:
            first, second = _run_two(loop, link.port, between)
            assert first == b"ok"
            assert second == b"ok", second
            assert engine.requests == 2
            if link.late_bytes:
                assert engine.connections == 2
                return
    pytest.fail("the request was never written into the race")


# -- 6. a fresh connection closed before the request came: sent again -------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_a_fresh_connection_closed_before_the_request_came_is_sent_again(loop):
    """An engine that accepts and closes a connection it cannot serve yet (a FIN, nothing
    unread), the request arriving after the close (a reset): provably never read, on a new
    connection as on a kept-alive one. Before: _send(kept=False) never asked never_read(), a
    502. (A reset alone, the request unread in the engine's buffer, is the ambiguous case:
    test_upstream_closes.py.)"""

    def script(peer: Peer) -> None:
        if peer.index == 1:
            peer.sock.close()
            return
        _serve_rest(peer)

    with Scripted(script) as engine, Link(engine.port, LINK_S) as link:
        out: list[bytes | BaseException] = []

        async def main() -> None:
            pool = UpstreamPool(read_timeout_s=5)
            try:
                answer = await pool.post("127.0.0.1", link.port, "/x", b"{}")
                out.append(await answer.read())
                answer.release()
            except Broken as exc:
                out.append(exc)
            finally:
                pool.close()

        run(loop, main)
        assert out[0] == b"ok", out[0]
        assert engine.requests == 1 and engine.connections == 2


# -- 7. an answer's head is buffered without bound --------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_an_endless_answer_head_is_refused_not_buffered(loop):
    """Reading pauses at 1 MiB of *body* buffered; the head has no bound at all: an engine
    (any `command` model is an arbitrary server) that sends 32 MiB of headers, or a header
    that never ends, has all of it parsed into conn.headers (a list of bytes pairs), held in
    the gateway's memory until read_timeout (600 s by default). uvicorn, h11 and aiohttp
    refuse heads over 8-64 KiB."""
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 1000 + b"\r\n"
    n = (32 << 20) // len(head)

    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send([b"HTTP/1.1 200 OK\r\n"])
        pad = b"X-Pad: " + b"a" * 1000 + b"\r\n"
        peer.send([pad * 1024 for _ in range(n // 1024)])
        peer.send([b"Content-Length: 2\r\n\r\nok"])

    with Scripted(script) as engine:
        out: list[object] = []

        async def main() -> None:
            pool = UpstreamPool(read_timeout_s=10)
            try:
                answer = await pool.post("127.0.0.1", engine.port, "/x", b"{}")
                out.append(len(answer.raw_headers))
                answer.release()
            except Broken as exc:
                out.append(exc)
            finally:
                pool.close()

        run(loop, main)
        assert isinstance(out[0], Broken), f"{out[0]} header lines taken into memory"


# -- 8. provably unread, then the new connection refused: NeverSent, not Broken (a 502) --------


@pytest.mark.parametrize("loop", LOOPS)
def test_an_unread_request_whose_retry_is_refused_is_never_sent(loop):
    """The engine is going: it closes the idle connection (FIN) as the request is on its way,
    the request meets a reset (proven never read, so post() tries a new connection), and the
    new connection is refused. The request reached no engine at all: NeverSent (what a refused
    first connection gives), which lets the relay restart the model and send it. Before:
    Broken, a 502."""
    for _ in range(5):
        with Scripted(lambda peer: None) as engine, Link(engine.port, LINK_S) as link:
            engine.script = _idle_close_soon(refuse=link)  # the link exists only now
            first, second = _second_refused(loop, link.port)
            assert first == b"ok"
            assert engine.requests == 1
            if link.late_bytes:
                assert isinstance(second, NeverSent), f"{second!r}: a 502 for a request never read"
                return
    pytest.fail("the request was never written into the race")


def _second_refused(loop: str, port: int) -> tuple[bytes, bytes | BaseException]:
    """Two requests, the second's error (or b"answered"), through one pool."""
    out: list[tuple[bytes, bytes | BaseException]] = []

    async def main() -> None:
        pool = UpstreamPool(read_timeout_s=5)
        try:
            first = await pool.post("127.0.0.1", port, "/x", b'{"n": 1}')
            body = await first.read()
            first.release()
            try:
                await pool.post("127.0.0.1", port, "/x", b'{"n": 2}')
                out.append((body, b"answered"))
            except (Broken, NeverSent) as exc:
                out.append((body, exc))
        finally:
            pool.close()

    run(loop, main)
    return out[0]


# -- 9. a connection idle past idle_max_s is not reused ---------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_a_connection_idle_past_the_bound_is_not_reused(loop):
    """An engine closes idle connections after its keep-alive timeout (uvicorn, llama-server:
    5 s); one idle long is where the ambiguous close races the write. It is not written to:
    the request goes on a new connection."""

    async def between() -> None:
        await asyncio.sleep(0.15)

    with Scripted(_serve_rest) as engine:
        out = []

        async def main() -> None:
            pool = UpstreamPool(read_timeout_s=5, idle_max_s=0.1)
            try:
                for _ in range(2):
                    answer = await pool.post("127.0.0.1", engine.port, "/x", b"{}")
                    out.append(await answer.read())
                    answer.release()
                    await between()
            finally:
                pool.close()

        run(loop, main)
        assert out == [b"ok", b"ok"]
        assert engine.requests == 2 and engine.connections == 2


# -- a stream's connection is not reused: llama-server closes it after every streamed answer --


@pytest.mark.parametrize("loop", LOOPS)
def test_a_connection_that_carried_a_stream_is_not_reused(loop):
    """llama-server closes the connection after each streamed answer, its FIN a fraction of a
    millisecond after the last chunk and no reset for a request written meanwhile: a request
    sent at once on that connection met a FIN alone, a 502 (7 of 30 behind vramgate). The
    engine here answers a stream, then closes as llama-server does, reading nothing more."""
    stream = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n"
              b"f\r\ndata: {\"a\":1}\n\n\r\n0\r\n\r\n")  # fmt: skip

    def script(peer: Peer) -> None:
        if peer.read_request() is None:
            return
        if peer.index == 1:
            peer.send([stream])
            time.sleep(0.01)  # the next request is written on it meanwhile (if it is reused)
            peer.sock.shutdown(socket.SHUT_WR)
            time.sleep(0.2)
            return
        peer.send([OK])
        _serve_rest(peer)

    with Scripted(script) as engine:
        out = []

        async def main() -> None:
            pool = UpstreamPool(read_timeout_s=5)
            first = await pool.post("127.0.0.1", engine.port, "/x", b"{}")
            out.append(b"".join([c async for c in first.chunks()]))
            first.release()
            second = await pool.post("127.0.0.1", engine.port, "/x", b"{}")
            out.append(await second.read())
            second.release()
            pool.close()

        run(loop, main)
        assert out == [b'data: {"a":1}\n\n', b"ok"], out
        assert engine.requests == 2 and engine.connections == 2


# -- nor is a 5xx answer's: uvicorn closes the connection after an app's unhandled error -----


@pytest.mark.parametrize("loop", LOOPS)
def test_a_connection_that_carried_a_server_error_is_not_reused(loop):
    """`transformers serve` (uvicorn) answers 500 to a malformed chat request (its app raised),
    then closes the connection without `Connection: close`: the next request, written on it
    meanwhile and unread, met a reset with no FIN first, a 502 (CI, test_transformers). The engine
    here answers 500, then closes as uvicorn does with the next request unread (a reset)."""
    error = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 21\r\n"
             b"Content-Type: text/plain; charset=utf-8\r\n\r\nInternal Server Error")  # fmt: skip

    def script(peer: Peer) -> None:
        if peer.read_request() is None:
            return
        if peer.index == 1:
            peer.send([error])
            time.sleep(0.05)  # the next request reaches it meanwhile (if it is reused), unread
            peer.sock.close()  # unread bytes: the kernel answers with a reset, no FIN
            return
        peer.send([OK])
        _serve_rest(peer)

    with Scripted(script) as engine:
        assert _run_two(loop, engine.port) == (b"Internal Server Error", b"ok")
        assert engine.requests == 2 and engine.connections == 2


# -- an idle connection is looked at before it is used: a FIN the loop has not read yet -------


@pytest.mark.parametrize("loop", LOOPS)
def test_a_fin_the_loop_has_not_read_yet_keeps_the_request_off_that_connection(loop):
    """The engine half-closes an idle kept-alive connection (FIN) and goes on reading what comes,
    answering nothing: a request written there is lost for good (a FIN and no reset proves
    nothing, a 502). The gateway's loop was busy when the FIN came (here: blocked), so only the
    look at the socket before the write (is_quiet's poll) keeps the request off it. A mutation
    run found nothing else that tested that look."""

    def script(peer: Peer) -> None:
        if peer.read_request() is None:
            return
        if peer.index == 1:
            peer.send([OK])
            time.sleep(0.01)
            peer.sock.shutdown(socket.SHUT_WR)  # FIN; what comes next is read and dropped
            peer.sock.settimeout(1)
            try:
                while peer.sock.recv(65536):
                    pass
            except OSError:
                pass
            return
        peer.send([OK])
        _serve_rest(peer)

    async def loop_busy() -> None:
        time.sleep(0.2)  # noqa: ASYNC251 (the loop busy: the FIN comes and is not read)

    with Scripted(script) as engine:
        assert _run_two(loop, engine.port, loop_busy) == (b"ok", b"ok")
        assert engine.connections == 2
