"""The relay's client against raw servers on loopback: what is sent again and what never is."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from tests.conftest import free_port
from vramgate.upstream import Broken, NeverSent, UpstreamPool


class Server:
    """A raw HTTP/1.1 server on loopback: counts requests and connections; `mode` says what it
    does with each request: answer and keep the connection, answer then close it without
    saying so, or read the request and close without a word."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self.connections = 0
        self.port = free_port()

    async def start(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break  # the client closed the connection
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )  # fmt: skip
            await reader.readexactly(length)
            self.requests += 1
            if self.mode == "silent":
                writer.close()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            if self.mode == "close-after":
                await asyncio.sleep(0.05)
                writer.close()
                return
            if self.mode == "reset-soon":  # the same, but the close is a reset (unread data)
                await asyncio.sleep(0.005)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.close()
                return


@pytest.mark.parametrize("mode", ["keep", "close-after"])
def test_kept_alive_connection_closed_by_the_engine_is_not_written_to(mode):
    """The engine closed an idle kept-alive connection (uvicorn does, after an error): the next
    request sees it closed before writing and takes a new one; nothing is sent twice."""

    async def run() -> None:
        server = Server(mode)
        async with await server.start():
            pool = UpstreamPool(read_timeout_s=5)
            for _ in range(3):
                answer = await pool.post("127.0.0.1", server.port, "/x", b"{}")
                assert answer.status == 200 and await answer.read() == b"ok"
                answer.release()
                await asyncio.sleep(0.2)  # the close, where there is one, arrives meanwhile
            assert server.requests == 3
            assert server.connections == (1 if mode == "keep" else 3)
            pool.close()

    asyncio.run(run())


def test_an_engine_that_takes_the_request_and_closes_is_broken_not_retried():
    async def run() -> None:
        server = Server("silent")
        async with await server.start():
            pool = UpstreamPool(read_timeout_s=5)
            with pytest.raises(Broken):
                await pool.post("127.0.0.1", server.port, "/x", b"{}")
            assert server.requests == 1
            pool.close()

    asyncio.run(run())


def test_a_refused_connection_never_sent_anything():
    async def run() -> None:
        pool = UpstreamPool(read_timeout_s=5)
        with pytest.raises(NeverSent):
            await pool.post("127.0.0.1", free_port(), "/x", b"{}")

    asyncio.run(run())


def test_a_reset_alone_after_the_write_is_broken_never_sent_again():
    """The engine resets a kept-alive connection just as the next request is written on it
    (`transformers serve` after a 500): a reset with no FIN before it is what a close with the
    request unread sends, and also what an abortive close after reading it whole sends, so it
    proves nothing: Broken (a 502), never sent a second time. Where the reset came before the
    write, the connection is not quiet and a new one takes the request. (Changed with the
    review of issue 23: this test used to expect the request sent again. The race that is
    provable, a FIN and then a reset, is test_upstream_closes.py's.)"""

    async def run() -> None:
        server = Server("reset-soon")
        async with await server.start():
            pool = UpstreamPool(read_timeout_s=5)
            answered = 0
            for _ in range(5):
                try:
                    answer = await pool.post("127.0.0.1", server.port, "/x", b"{}")
                except Broken:
                    continue
                assert await answer.read() == b"ok"
                answered += 1
                answer.release()  # and the next one is written at once, into the race
            assert answered >= 1 and server.requests == answered  # none read twice
            pool.close()

    asyncio.run(run())
