"""The relay's client against raw scripted engines: answers of every size and framing, split at
every byte, read late or slowly, and on connections numbered past select()'s 1023."""

from __future__ import annotations

import asyncio
import random
import resource
import socket

import pytest

from tests.integration.scripted import LOOPS, Scripted, answering, framed, run
from vramgate import upstream
from vramgate.upstream import UpstreamPool

SIZES = [0, 1, 64 << 10, (1 << 20) + 1, 8 << 20, 64 << 20]


async def fetch(pool: UpstreamPool, port: int, late_s: float = 0.0) -> bytes:
    """One POST's whole answer; `late_s`: the answer is first read this long after its headers
    came (the relay's task may run late: everything may have arrived by then)."""
    answer = await pool.post("127.0.0.1", port, "/x", b"{}")
    assert answer.status == 200
    if late_s:
        await asyncio.sleep(late_s)
    body = await answer.read()
    answer.release()
    return body


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("size", SIZES)
def test_an_answer_of_any_size_arrives_whole_and_leaves_its_connection_reusable(size, framing):
    body = random.Random(size).randbytes(size)
    with Scripted(answering(framed(body, framing))) as engine:

        async def main() -> None:
            pool = UpstreamPool(read_timeout_s=10)
            for _ in range(2):
                assert await fetch(pool, engine.port) == body
            assert engine.connections == 1 and engine.requests == 2
            pool.close()

        run("uvloop", main)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("size", [(1 << 20) + 1, 8 << 20])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_big_answer_that_arrived_before_it_was_read_is_not_stalled(loop, size, framing):
    """Reproduced: headers and over 1 MiB arrived before the relay first awaited the body;
    reading had paused at 1 MiB and nothing resumed it: read_timeout, then a 502."""
    body = random.Random(size).randbytes(size)
    with Scripted(answering(framed(body, framing))) as engine:

        async def main() -> None:
            pool = UpstreamPool(read_timeout_s=3)
            assert await fetch(pool, engine.port, late_s=0.3) == body
            assert await fetch(pool, engine.port, late_s=0.3) == body
            pool.close()

        run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_an_answer_split_at_every_byte_parses_the_same(loop, framing):
    """Headers, chunk-size lines, extensions, bodies and the last chunk each cut at every
    offset (two pieces, the client reading between), then byte by byte."""
    body = b'{"id":"x","choices":[{"text":"hello\\r\\n0\\r\\n"}]}'
    answer = framed(body, framing, chunk_bytes=17)

    splits = [[cut] for cut in range(1, len(answer))] + [list(range(1, len(answer)))]
    with Scripted(answering(answer, pause_s=0.001, splits=splits)) as engine:

        async def main() -> None:
            pool = UpstreamPool(read_timeout_s=5)
            for cut in splits:
                assert await fetch(pool, engine.port) == body, cut
            assert engine.connections == (len(splits) if framing == "close" else 1)
            pool.close()

        run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_slow_reader_bounds_what_is_buffered_and_gets_every_byte(loop):
    """A client reading a stream slowly: reading pauses at the limit and resumes as the
    client takes, so memory stays bounded; nothing is lost."""
    body = random.Random(7).randbytes(8 << 20)
    with Scripted(answering(framed(body, "chunked", chunk_bytes=64 << 10))) as engine:

        async def main() -> None:
            pool = UpstreamPool(read_timeout_s=5)
            answer = await pool.post("127.0.0.1", engine.port, "/x", b"{}")
            got, peak = [], 0
            async for piece in answer.chunks():
                got.append(piece)
                await asyncio.sleep(0.003)
                peak = max(peak, answer._conn.buffered)
            answer.release()
            assert b"".join(got) == body
            # One read (256 KiB at most) may land past the limit before reading pauses.
            assert peak <= upstream._READ_LIMIT + (256 << 10), peak
            pool.close()

        run(loop, main)


def _fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE's hard limit {hard} is under {wanted}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.mark.parametrize("loop", LOOPS)
def test_1100_connections_open_at_once_and_reused_past_fd_1023(loop):
    """Reproduced: an idle connection whose fd was over 1023 made select() raise (a 500 to the
    client) and was neither used nor closed (a leak)."""
    _fd_limit(4096)
    count = 1100

    async def main() -> None:
        held, gate = 0, asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal held
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                await reader.readexactly(int(head.lower().split(b"content-length:")[1].split()[0]))
                held += 1
                if held >= count:
                    gate.set()
                await gate.wait()  # every connection is open at once
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=2048)
        port = server.sockets[0].getsockname()[1]
        pool = UpstreamPool(read_timeout_s=30)
        bodies = await asyncio.gather(*(fetch(pool, port) for _ in range(count)))
        assert bodies == [b"ok"] * count
        idle = pool._idle[("127.0.0.1", port)]
        assert len(idle) == upstream._IDLE_KEPT
        assert max(c.transport.get_extra_info("socket").fileno() for c in idle) > 1023  # type: ignore[union-attr]
        for _ in range(3):  # every kept connection taken again at once
            again = await asyncio.gather(*(fetch(pool, port) for _ in range(len(idle))))
            assert again == [b"ok"] * upstream._IDLE_KEPT
        assert len(idle) == upstream._IDLE_KEPT
        pool.close()
        server.close()

    run(loop, main)


def test_no_socket_is_left_open_by_requests_on_high_fds():
    """After many requests on reused high-numbered connections, only the idle ones kept stay."""
    _fd_limit(4096)
    filler = [socket.socket() for _ in range(1100)]  # every new fd is over 1023
    try:
        with Scripted(answering(framed(b"ok", "length"))) as engine:

            async def main() -> None:
                pool = UpstreamPool(read_timeout_s=5)
                for _ in range(50):
                    assert await fetch(pool, engine.port) == b"ok"
                assert engine.connections == 1
                pool.close()

            run("uvloop", main)
    finally:
        for sock in filler:
            sock.close()
