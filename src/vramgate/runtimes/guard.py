"""The guard in front of an engine on another node: it listens on the node's address, lets in a
connection whose first request carries the engine's secret (`x-vramgate-engine-key`), and then
passes its bytes both ways to the engine, which itself listens on the node's loopback only.

The secret is checked once per connection: a connection is opened by the gateway, and every
request on it is the gateway's. Anyone else on the network gets a 403 and the connection closed,
and never reaches the engine (no prompt, no weights' answers, no admin route like /slots).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
from pathlib import Path

KEY_HEADER = "x-vramgate-engine-key"
HEAD_LIMIT = 64 * 1024  # a request head larger than this is not the gateway's
HEAD_TIMEOUT_S = 10.0
# Connections still owing their request head, at most: beyond, the oldest is closed. Each is
# held up to HEAD_TIMEOUT_S; uncapped, a stranger opening thousands ran the agent out of file
# descriptors. The oldest goes, not the newest: the gateway's own connection, which sends its
# head at once, always gets in however many idle ones a stranger keeps opening.
MAX_WAITING = 64
CHUNK = 256 * 1024
log = logging.getLogger("vramgate.guard")
FORBIDDEN = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b'Content-Length: 58\r\n\r\n{"error":"this engine answers its vramgate gateway only."}'
)


def has_key(head: bytes, secret: str) -> bool:
    """Whether the request head carries `secret` in the key header (constant-time compare)."""
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == KEY_HEADER.encode():
            return hmac.compare_digest(value.strip(), secret.encode())
    return False


class Guard:
    """One engine's guard: `start` binds (host, 0) and returns the port."""

    def __init__(self, secret: str, engine_port: int) -> None:
        self.secret = secret
        self.engine_port = engine_port
        self.server: asyncio.Server | None = None
        self.refused = 0  # connections turned away, for the agent's report
        self._tasks: set[asyncio.Task[None]] = set()
        self.waiting: dict[asyncio.StreamWriter, None] = {}  # owing their head, oldest first

    async def start(self, host: str) -> int:
        self.server = await asyncio.start_server(self._serve, host, 0, limit=HEAD_LIMIT)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
        for task in list(self._tasks):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._pass(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _head(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        self.waiting[writer] = None
        if len(self.waiting) > MAX_WAITING:
            oldest = next(iter(self.waiting))
            del self.waiting[oldest]
            self.refused += 1
            oldest.transport.abort()  # its read ends (IncompleteReadError): its task ends
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        finally:
            self.waiting.pop(writer, None)

    async def _pass(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await self._head(reader, writer)
        if not has_key(head, self.secret):
            self.refused += 1
            peer = writer.get_extra_info("peername")
            log.warning("refused a connection from %s: no engine key", peer)
            writer.write(FORBIDDEN)
            with contextlib.suppress(OSError):
                await writer.drain()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.engine_port)
        try:
            up_writer.write(head)
            both = (
                asyncio.ensure_future(_pipe(reader, up_writer)),
                asyncio.ensure_future(_pipe(up_reader, writer)),
            )
            try:
                # Either side's end ends the connection: the gateway's hang-up reaches the
                # engine (it cancels the generation), the engine's close reaches the gateway.
                await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in both:
                    pipe.cancel()
        finally:
            up_writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while data := await src.read(CHUNK):
        dst.write(data)
        await dst.drain()


LISTEN = "0A"  # a socket's state in /proc/net/tcp{,6}: listening


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp's address: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def exposed(port: int, tables: list[str]) -> list[str]:
    """The addresses beyond loopback where something listens on `port`, read from the text of
    /proc/net/tcp and /proc/net/tcp6."""
    found = []
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != LISTEN:
                continue
            hex_address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) != port:
                continue
            address = _address(hex_address)
            if not address.is_loopback:
                found.append(f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}")
    return found


def exposed_here(port: int) -> list[str]:
    """`exposed` on this machine's sockets: an engine on a node must listen on its loopback,
    behind its guard. A `command` engine that binds 0.0.0.0 (its own --host) is reachable there
    by anyone, without the guard's key."""
    tables = []
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            tables.append(Path(f"/proc/net/{name}").read_text())
    return exposed(port, tables)
