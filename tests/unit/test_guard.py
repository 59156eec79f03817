"""The guard in front of an engine on another node: its key check, and a real guard on loopback
in front of a tiny server: refused without the key, passed through (keep-alive too) with it."""

from __future__ import annotations

import asyncio

from vramgate.runtimes.guard import MAX_WAITING, Guard, exposed, exposed_here, has_key


def test_the_key_is_found_in_any_case_and_only_whole():
    head = b"POST /v1/x HTTP/1.1\r\nHost: h\r\nX-Vramgate-Engine-Key: s3cret\r\n\r\n"
    assert has_key(head, "s3cret")
    assert not has_key(head, "s3cre") and not has_key(head, "s3cret2")
    assert not has_key(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", "s3cret")
    # The request line is not a header, whatever it holds.
    assert not has_key(b"GET /x-vramgate-engine-key: s3cret HTTP/1.1\r\n\r\n", "s3cret")


async def _engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request on the connection with its own path (keep-alive)."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            break
        path = head.split(b" ")[1]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
        await writer.drain()
    writer.close()


async def _exchange(port: int, requests: list[bytes]) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    for request in requests:
        writer.write(request)
        await writer.drain()
        answers.append(await asyncio.wait_for(reader.read(1000), 5))
    writer.close()
    return answers


def test_a_guard_refuses_strangers_and_passes_the_gateway_through():
    async def main() -> None:
        engine = await asyncio.start_server(_engine, "127.0.0.1", 0)
        guard = Guard("s3cret", engine.sockets[0].getsockname()[1])
        port = await guard.start("127.0.0.1")
        [refused] = await _exchange(port, [b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"])
        assert refused.startswith(b"HTTP/1.1 403") and guard.refused == 1
        keyed = b"GET /%s HTTP/1.1\r\nx-vramgate-engine-key: s3cret\r\n\r\n"
        answers = await _exchange(port, [keyed % b"one", keyed % b"two"])
        assert answers[0].endswith(b"/one") and answers[1].endswith(b"/two")
        await guard.close()
        engine.close()

    asyncio.run(main())


def test_idle_strangers_are_capped_and_the_gateway_still_gets_in():
    """Connections that send no request head are held HEAD_TIMEOUT_S each; without a cap, a
    stranger opening thousands runs the agent out of file descriptors. Beyond the cap the
    oldest one still waiting is closed, so the gateway's own connection still gets through."""

    async def main() -> None:
        engine = await asyncio.start_server(_engine, "127.0.0.1", 0)
        guard = Guard("s3cret", engine.sockets[0].getsockname()[1])
        port = await guard.start("127.0.0.1")
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_WAITING + 20)]
        await asyncio.sleep(0.2)
        assert len(guard.waiting) <= MAX_WAITING
        closed = 0
        for reader, _ in idle[:20]:  # the oldest went first
            closed += await asyncio.wait_for(reader.read(100), 2) == b""
        assert closed == 20
        keyed = b"GET /%s HTTP/1.1\r\nx-vramgate-engine-key: s3cret\r\n\r\n"
        [answer] = await _exchange(port, [keyed % b"in"])
        assert answer.endswith(b"/in")
        for _, writer in idle:
            writer.close()
        await guard.close()
        engine.close()

    asyncio.run(main())


TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   1: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   2: 0100007F:1F91 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0
   3: 0B00000A:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
"""
TCP6 = """  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:1F93 00000000000000000000000000000000:0000 0A
   1: 00000000000000000000000000000000:1F94 00000000000000000000000000000000:0000 0A
   2: 0000000000000000FFFF00000100007F:1F95 00000000000000000000000000000000:0000 0A
"""


def test_an_engine_listening_beyond_loopback_is_found():
    """An engine on a node must listen on loopback only, behind its guard: one that binds
    0.0.0.0 or :: (a `command` engine's own --host) is reachable without the key."""
    assert exposed(0x1F90, [TCP, TCP6]) == []  # 127.0.0.1 only
    assert exposed(0x1F91, [TCP, TCP6]) == ["0.0.0.0:8081"]  # the connected one is no listener
    assert exposed(0x1F92, [TCP, TCP6]) == ["10.0.0.11:8082"]
    assert exposed(0x1F93, [TCP, TCP6]) == []  # ::1
    assert exposed(0x1F94, [TCP, TCP6]) == ["[::]:8084"]
    assert exposed(0x1F95, [TCP, TCP6]) == []  # ::ffff:127.0.0.1


def test_a_loopback_listener_here_is_not_exposed():
    async def main() -> None:
        server = await asyncio.start_server(_engine, "127.0.0.1", 0)
        assert exposed_here(server.sockets[0].getsockname()[1]) == []
        server.close()

    asyncio.run(main())
