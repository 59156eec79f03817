"""The relay's HTTP/1.1 client: keep-alive connections to engines over asyncio protocols, answers
parsed by httptools (llhttp, the parser uvicorn uses), bodies handed on as they arrive.

Why not a general client: a relayed request must know whether it left. A request is sent again
only if the engine never read it, proven in the first two cases and taken on one assumption in
the third:
- the connection was refused (NeverSent: nothing was written);
- a kept-alive connection was found not quiet before a byte was written (its FIN, a reset, or
  stray bytes already read by the loop or waiting to be read): it is closed, another is used;
- (the race every keep-alive client meets) the engine closed the connection just as the
  request was written: its close came as a FIN with no byte of an answer, and a reset followed
  it. What FIN-then-reset proves: the engine's socket had nothing unread when it sent the FIN,
  and bytes reached it after it could no longer read them. An engine that close()s sends just
  that when the request came after its close, unread. The one engine behaviour this assumes
  away: an engine that reads the request whole, then half-closes (shutdown(SHUT_WR): the FIN)
  and then closes abortively (SO_LINGER 0: the reset) without answering sends the same two
  segments, and gets the request a second time (pinned by test_upstream_halfclose_abort.py).
  TCP alone cannot tell the two apart: the engine's acknowledgement of the request would, but
  any TCP proxy in between (Docker's userland proxy, a sidecar) acknowledges on its behalf.
  No engine we relay to does this (they close(), or answer 5xx). This holds however late the
  loop looks (SO_ERROR keeps the reset), on a kept-alive or a new connection. It is sent once
  more on a new connection; if that one is refused or meets the same close, NeverSent (the
  relay may restart the engine and send it).
Anything else after the write is Broken (a 502), never sent again here, because TCP cannot
tell it from a request the engine read and may have run: a reset with no FIN before it is what a
close with the request unread in its buffer sends, and also what an abortive close (SO_LINGER
0) after reading it whole sends; a clean close (FIN) with no reset after it may follow a read.
The first of these, with no byte of an answer, is ResetUnanswered: the relay sends it again
only once the engine's exit is seen (a process killed with requests unread in its socket's
buffer, a node's agent killed with them queued at its guard), when no engine that could have
run it is left.
To keep that ambiguous case rare, a kept-alive connection idle longer than `idle_max_s`
(2 s, under the 5 s keep-alive timeout of uvicorn and llama-server) is not reused, and one
that carried an answer with bytes after its end, or any other bytes while idle, is closed.
Nor is one that carried a stream (text/event-stream): llama-server closes the connection after
every streamed answer, its FIN a fraction of a millisecond after the answer's last byte and with
no reset for a request written meanwhile (seen: 7 of 30 requests that followed a stream at once),
the ambiguous case; a new connection costs a loopback round trip, a stream far more. Nor is one
that carried a 5xx answer: uvicorn (`transformers serve`, vLLM, SGLang) closes the connection
after an app's unhandled error, once the 500 is sent, without `Connection: close`; a request
written in between met a reset with no FIN first (the ambiguous case; seen in CI after a
malformed chat request to `transformers serve`).
An answer's head over _HEAD_LIMIT is Broken, interim (1xx) answers' heads before it counted
(they are skipped, RFC 9110 15.2); so is a trailer section over it (its fields are dropped: the
relay hands on no trailers). aiohttp's and httpx's clients cannot tell these
cases apart, and aiohttp's costs about half of the gateway's CPU per request.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import select
import socket
from collections.abc import AsyncIterator

import httptools

_READ_LIMIT = 1 << 20  # bytes of answer buffered before reading from the engine pauses
_HEAD_LIMIT = 64 << 10  # bytes of an answer's head (status line and headers), as h11 and nginx
_IDLE_KEPT = 64  # idle connections kept per engine
IDLE_MAX_S = 2.0  # a kept-alive connection idle longer is not reused (engines close at 5 s)
RACE_S = 0.05  # how long after a write (or the FIN, if the loop saw it later) a reset is awaited


class NeverSent(Exception):
    """The request did not reach the engine (refused, or no connection): safe to send again."""


class Broken(Exception):
    """The engine closed the connection or failed after the request was sent (maybe run)."""


class ReadTimeout(Broken):
    """The engine sent nothing for read_timeout seconds."""


class ResetUnanswered(Broken):
    """The connection was reset after the request was written, with no FIN before it and no
    byte of an answer: what a socket closed with the request unread in its buffer sends (a
    process killed before it read it, a listener closed with the connection still queued), and
    also what an abortive close after reading it sends. Broken like any other: the relay sends
    it again only once the engine's exit is seen, when no engine that could have run it is
    left (relaying.run)."""


class _Unread(Exception):
    """A request the engine closed on, FIN then reset (never read, but for the one engine
    behaviour the module's docstring names): post() sends it once more on a new connection."""


class _Extra(Exception):
    """Raised in the parser's callback to stop it at a second message after the answer."""


class _Connection(asyncio.Protocol):
    """One connection, one answer at a time; the parser's callbacks fill the answer's parts."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool, self.key = pool, key
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.lost_unread = False
        self.eof_at: float | None = None
        self.extra = False  # bytes came after an answer's end: never reused
        self.idle_since = 0.0
        self.paused = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self._begin()

    def _begin(self) -> None:
        """Fresh state for the next answer on this connection."""
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.streamed = False  # the answer is an event stream: its connection is not reused
        self.complete = False
        self.keep_alive = False
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.got_bytes = False
        self.head_bytes = 0
        self.bodiless_bytes = 0  # bytes since the body last grew: a trailer, chunk extensions
        self.interim = False  # the parser is in a 1xx interim answer, skipped
        self.is_sent = False  # the request for this answer is written

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.complete:  # after the answer's end (or on an idle connection): not ours
            self.extra = True
            return
        before = self.buffered
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.complete:  # on_message_begin refused a second message after ours
                self.extra = True
                return
            self._fail(Broken(f"the engine's answer is not valid HTTP ({exc})"))
            return
        if not self.headers_done:
            # All of it was head (interim answers' heads included): bounded, or an engine's
            # endless head (or endless 1xx answers) would fill our memory.
            self.head_bytes += len(data)
            if self.head_bytes > _HEAD_LIMIT:
                self._fail(Broken(f"the engine's answer head is over {_HEAD_LIMIT >> 10} KiB"))
                if self.transport is not None:
                    self.transport.abort()
                return
        elif not self.complete:
            # Bytes that carried no body (a chunked answer's trailer section, chunk extensions)
            # are bounded as the head is: llhttp would hold an endless trailer field whole.
            self.bodiless_bytes = self.bodiless_bytes + len(data) if self.buffered == before else 0
            if self.bodiless_bytes > _HEAD_LIMIT:
                self._fail(Broken(f"the engine's answer trailer is over {_HEAD_LIMIT >> 10} KiB"))
                if self.transport is not None:
                    self.transport.abort()
                return
        if self.buffered > _READ_LIMIT and not self.complete and not self.paused:
            # A slow client: the engine waits, memory stays bounded. take() resumes, and wait()
            # never waits while body is buffered, so a pause always has its resume coming.
            self.paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.headers_done and not self.complete and self._until_close():
            self.on_message_complete()  # an answer delimited by the close itself
        elif self.is_sent and not self.got_bytes:
            # Closed with nothing answered: whether the engine read the request is told by a
            # reset that may follow (our bytes met its closed socket), so the socket is kept
            # open to see it (never_read); the pool closes it.
            self.eof_at = self.loop.time()
            self._fail(Broken("the engine closed the connection without answering"))
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        # A reset (or a write that met one); after the engine's FIN it proves our bytes unread.
        self.lost_unread = isinstance(exc, ConnectionResetError | BrokenPipeError)
        self.pool.forget(self)
        if not self.complete:
            reason = f" ({exc})" if exc else ""
            if self.lost_unread and self.is_sent and not self.got_bytes and self.eof_at is None:
                self._fail(ResetUnanswered(f"the engine reset the connection unanswered{reason}"))
            else:
                self._fail(Broken(f"the engine closed the connection mid-answer{reason}"))

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # A second answer in the same bytes (stale, or smuggled): stop the parser here,
            # so nothing of it joins this answer's body.
            raise _Extra("bytes after the end of the answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        # A trailer's fields (after headers_done) are dropped: the relay hands on no trailers.
        if not self.headers_done:
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints): RFC 9110 15.2, a client skips
            # one it did not expect; the final answer follows on the same connection.
            self.interim = True
            self.headers.clear()
            return
        self.status = status
        self.headers_done = True
        self.streamed = any(
            name == b"content-type" and value.lower().startswith(b"text/event-stream")
            for name, value in self.headers
        )
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        # Read now: the parser forgets the message's flags once it has ended.
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # -- waiting ---------------------------------------------------------------------------

    def _until_close(self) -> bool:
        names = {name for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout_s: float) -> None:
        """Until there is something to act on: headers, body to take, the end, or a failure
        (raised); ReadTimeout after `timeout_s` of silence. What arrived before the call counts
        (level, not edge): the body may have filled the buffer and paused reading already, and
        waiting for more would then wait for ever (seen: 4 MiB of embeddings that arrived with
        their headers: read_timeout, then a 502)."""
        if self.error is not None:
            raise self.error
        if self.body or self.complete:
            return
        self.waiter = waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout_s, self._timed_out, waiter, timeout_s)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None
        if self.error is not None:
            raise self.error

    def _timed_out(self, waiter: asyncio.Future[None], timeout_s: float) -> None:
        if not waiter.done():
            self._fail(ReadTimeout(f"the engine sent nothing for {timeout_s:g} s"))

    def take(self) -> bytes:
        """What has arrived of the body since the last call."""
        data = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        self.body.clear()
        self.buffered = 0
        if self.paused and self.transport is not None and not self.lost:
            self.paused = False
            self.transport.resume_reading()
        return data

    # -- reuse -----------------------------------------------------------------------------

    def is_reusable(self) -> bool:
        return (
            self.complete
            and not self.extra
            and not self.streamed  # the engine may close it as we write (the docstring)
            and self.status < 500  # likewise (uvicorn closes after an app's unhandled error)
            and not self.lost
            and self.error is None
            and self.keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def is_quiet(self) -> bool:
        """An idle kept-alive connection may take a request: nothing waits to be read on it (a
        FIN the engine sent when it closed its end, or stray bytes). Checked just before the
        write, so a request is never written to a connection known to be closing. What the loop
        has already read counts too: stray bytes (extra), a parser error, a close."""
        if self.lost or self.extra or self.error is not None or self.eof_at is not None:
            return False
        if self.transport is None or self.transport.is_closing():
            return False
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        # poll, not select: select() takes no fd over 1023, and a gateway holds more.
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return not poller.poll(0)

    async def never_read(self, written: float) -> bool:
        """The engine never read the request written at `written` (the module's docstring
        says what this proves and what it assumes away): nothing of an answer came, its FIN
        came, and a reset followed it (our bytes met a socket that could no longer read;
        it shows in SO_ERROR, EPIPE once the FIN is in). The reset is awaited RACE_S after the
        write or the FIN, whichever the loop saw later; one that came while the loop was busy
        is in SO_ERROR already. A reset with no FIN first, or a FIN with no reset, is no proof:
        the engine may have read the request whole."""
        if self.got_bytes or self.eof_at is None:
            return False
        if self.lost:
            return self.lost_unread
        if self.transport is None:
            return False
        sock = self.transport.get_extra_info("socket")
        deadline = max(written, self.eof_at) + RACE_S
        pause_s = 0.0005
        while True:
            if self.lost:  # closed meanwhile (the pool was closed, or the engine aborted)
                return False
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error in (errno.ECONNRESET, errno.EPIPE):
                return True
            left_s = deadline - self.loop.time()
            if left_s <= 0:
                return False
            await asyncio.sleep(min(pause_s, left_s))  # a reset is a round trip away at most
            pause_s *= 2

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()  # an answer cut short: the engine sees it and stops


class Answer:
    """An engine's answer: status and headers at once, the body as it comes."""

    def __init__(self, conn: _Connection, read_timeout_s: float) -> None:
        self._conn = conn
        self._timeout_s = read_timeout_s
        self.status = conn.status
        self.raw_headers = conn.headers

    @property
    def content_type(self) -> bytes:
        for name, value in self.raw_headers:
            if name == b"content-type":
                return value
        return b"application/octet-stream"

    async def read(self) -> bytes:
        conn = self._conn
        parts: list[bytes] = []
        while True:
            parts.append(conn.take())  # before waiting: this may be what resumes reading
            if conn.complete:
                return b"".join(parts)
            await conn.wait(self._timeout_s)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in the pieces the engine sent (joined where several wait)."""
        conn = self._conn
        while True:
            if conn.body:
                yield conn.take()
                continue
            if conn.complete:
                return
            await conn.wait(self._timeout_s)

    def release(self) -> None:
        """Done with it: a complete answer leaves its connection for the next request."""
        self._conn.pool.put_back(self._conn)


class UpstreamPool:
    """Connections to engines by (host, port); no limit: the scheduler bounds concurrency."""

    def __init__(
        self, read_timeout_s: float, connect_timeout_s: float = 10.0, idle_max_s: float = IDLE_MAX_S
    ) -> None:
        self.read_timeout_s = read_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.idle_max_s = idle_max_s
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._busy: set[_Connection] = set()

    async def post(self, host: str, port: int, path: str, body: bytes, head: bytes = b"") -> Answer:
        """POSTs `body` (JSON) and returns once the answer's headers are in. NeverSent: nothing
        reached the engine; Broken: it may have run."""
        key = (host, port)
        request = b"".join(
            (
                b"POST ", path.encode(), b" HTTP/1.1\r\nHost: ", host.encode(), b":",
                str(port).encode(), b"\r\nContent-Type: application/json\r\nContent-Length: ",
                str(len(body)).encode(), b"\r\n", head, b"\r\n", body,
            )
        )  # fmt: skip
        conn = self._idle_connection(key) or await self._connect(key)
        try:
            return await self._send(conn, request)
        except _Unread:
            pass
        # The race every keep-alive client meets: the engine closed the connection just as the
        # request was written (seen: llama-server, 3 ms after an answer), and the reset after
        # its FIN says it never read it. Once more on a new connection; a refusal there, or
        # the same close, leaves it never read anywhere: NeverSent, for the relay to decide.
        fresh = await self._connect(key)
        try:
            return await self._send(fresh, request)
        except _Unread:
            raise NeverSent(
                "the engine closed two connections before reading the request"
            ) from None

    async def _send(self, conn: _Connection, request: bytes) -> Answer:
        """Writes the request and waits for the answer's headers; a request provably never
        read raises _Unread, any other failure after the write Broken."""
        self._busy.add(conn)
        transport = conn.transport
        if transport is None or transport.is_closing():  # closed as soon as it was made
            self.discard(conn)
            raise NeverSent("the engine closed the connection before the request was sent")
        written = conn.loop.time()
        conn.is_sent = True
        transport.write(request)
        try:
            while not conn.headers_done:
                await conn.wait(self.read_timeout_s)
        except BaseException as exc:
            try:
                unread = isinstance(exc, Broken) and await conn.never_read(written)
            finally:
                self.discard(conn)
            if unread:
                raise _Unread() from exc
            raise
        return Answer(conn, self.read_timeout_s)

    def _idle_connection(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            # Idle long, the engine may be closing it as we write: a new one costs a round trip,
            # the race an ambiguous 502 (most recently used first: the rest are older still).
            if now - conn.idle_since <= self.idle_max_s and conn.is_quiet():
                conn._begin()
                return conn
            conn.close()  # closed by the engine meanwhile, or too old: never written to
        return None

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self, key), *key),
                self.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise NeverSent(f"cannot connect to {key[0]}:{key[1]} ({exc or 'timed out'})") from exc
        return conn

    def put_back(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if not conn.is_reusable():
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= _IDLE_KEPT:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        idle.append(conn)

    def discard(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        conn.close()

    def forget(self, conn: _Connection) -> None:
        """A connection the engine closed: out of the idle list."""
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def abort(self, host: str, port: int) -> None:
        """An engine is gone (its node may be, too: nothing would ever answer): every connection
        to it ends now, and the requests on them fail at once instead of at read_timeout."""
        key = (host, port)
        for conn in self._idle.pop(key, []):
            conn.close()
        for conn in [c for c in self._busy if c.key == key]:
            conn.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        for conn in list(self._busy):
            conn.close()
        self._idle.clear()
        self._busy.clear()
