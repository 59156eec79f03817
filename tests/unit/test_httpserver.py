"""MergedWrites: what the server writes in one loop turn leaves as one write, in order; a close
sends what is pending first; nothing is written to a transport that is closing."""

from __future__ import annotations

import asyncio

from vramgate.httpserver import MergedWrites


class Transport:
    """Records the writes a real socket transport would get."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_writes_of_one_turn_go_out_as_one_and_the_next_turn_separately():
    async def run() -> list[bytes]:
        transport = Transport()
        merged = MergedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        merged.write(b"HTTP/1.1 200 OK\r\n\r\n")
        merged.write(b"body")
        assert transport.writes == []  # not before the turn ends
        await asyncio.sleep(0)
        merged.write(b"chunk")
        await asyncio.sleep(0)
        assert merged.get_extra_info("peername") == "info:peername"
        return transport.writes

    assert asyncio.run(run()) == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"chunk"]


def test_close_sends_what_is_pending_first_and_a_closing_transport_gets_nothing():
    async def run() -> tuple[list[bytes], list[bytes]]:
        loop = asyncio.get_running_loop()
        first, second = Transport(), Transport()
        merged = MergedWrites(first, loop)  # type: ignore[arg-type]
        merged.write(b"last words")
        merged.close()
        gone = MergedWrites(second, loop)  # type: ignore[arg-type]
        gone.write(b"to no one")
        second.closing = True  # the client went away meanwhile
        await asyncio.sleep(0)
        return first.writes, second.writes

    closed, dropped = asyncio.run(run())
    assert closed == [b"last words"] and dropped == []
