"""Raw engines for the upstream client's tests: a loopback socket server whose every connection
runs a script (a plain function of the connection, in its own thread) that reads requests and
sends exact bytes, split, slowed, closed or reset where the test says."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import uvloop

from tests.integration.raw_http import RequestReader

LOOPS = ["asyncio", "uvloop"]  # the gateway runs on uvloop; asyncio's loop must work as well


def run(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Runs `main()` on a fresh loop of the kind named."""
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def framed(body: bytes, framing: str, chunk_bytes: int = 1 << 20) -> bytes:
    """A 200 answer carrying `body`: `length` (Content-Length), `chunked` (chunks of
    `chunk_bytes`, a chunk extension on the first), or `close` (delimited by the close)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    if framing == "close":
        return head + b"Connection: close\r\n\r\n" + body
    pieces = [body[i : i + chunk_bytes] for i in range(0, len(body), chunk_bytes)]
    chunks = [b"%x%s\r\n%s\r\n" % (len(p), b";x=1" if i == 0 else b"", p)
              for i, p in enumerate(pieces)]  # fmt: skip
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(chunks) + b"0\r\n\r\n"


class Peer:
    """One accepted connection, as its script sees it (a blocking socket)."""

    def __init__(self, sock: socket.socket, server: Scripted, index: int) -> None:
        self.sock, self.server = sock, server
        self.index = index  # 1 for the server's first connection, 2 for the next...
        self._requests = RequestReader(sock)

    def read_request(self) -> bytes | None:
        """The next request's body, read whole (counted in `server.requests`); None at EOF."""
        if (request := self._requests.next()) is None:
            return None
        with self.server.lock:
            self.server.requests += 1
        return request[1]

    def read_some(self, size: int) -> bytes:
        """Up to `size` bytes of what the client sent (a request read in part)."""
        return self.sock.recv(size)

    def send(self, pieces: Iterable[bytes], pause_s: float = 0.0) -> None:
        """Each piece on its own (a pause between them lets the client read each apart)."""
        for i, piece in enumerate(pieces):
            if i and pause_s:
                time.sleep(pause_s)
            self.sock.sendall(piece)
            with self.server.lock:
                self.server.sent += len(piece)

    def reset(self) -> None:
        """Closes with a reset (RST), whatever was read."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class Scripted:
    """The server: `script(peer)` runs once per accepted connection; counts connections, the
    requests read whole and the bytes sent."""

    def __init__(self, script: Callable[[Peer], None]) -> None:
        self.script = script
        self.lock = threading.Lock()
        self.connections = self.requests = self.sent = 0
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=2048)
        self.listener.settimeout(0.05)  # so that the accept loop sees `stop`
        self.port: int = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.connections += 1
                self._socks.append(sock)
            args = (sock, self.connections)
            thread = threading.Thread(target=self._serve, args=args, daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, index: int) -> None:
        with contextlib.suppress(OSError), sock:
            self.script(Peer(sock, self, index))

    def __enter__(self) -> Scripted:
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._acceptor.join(5)
        self.listener.close()
        for sock in self._socks:  # wakes scripts blocked on a connection the client keeps
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)


def answering(
    answer: bytes, pause_s: float = 0.0, splits: list[list[int]] | None = None
) -> Callable[[Peer], None]:
    """A script: every request gets `answer`; the n-th request read by the server gets it cut at
    the offsets `splits[n]` (the last of them for any later one). An answer that says
    `Connection: close` is followed by the close."""
    closes = b"\r\nConnection: close\r\n" in answer.partition(b"\r\n\r\n")[0] + b"\r\n"

    def script(peer: Peer) -> None:
        while peer.read_request() is not None:
            cuts = splits[min(peer.server.requests, len(splits)) - 1] if splits else []
            offsets = [0, *cuts, len(answer)]
            peer.send([answer[a:b] for a, b in itertools.pairwise(offsets)], pause_s)
            if closes:
                return

    return script


class Link:
    """A slow network between the client and a server on loopback: everything (bytes, a close,
    a reset) arrives `delay_s` after it was sent, so the client can write a request while the
    server's close is still on its way, as across a real network.

    One thread polls every socket and closes them itself: a socket closed while another thread
    waits on it (recv, poll) is released, and its reset sent, only when that wait ends."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.target_port, self.delay_s = target_port, delay_s
        self.late_bytes = 0  # bytes the client sent after the server had closed its end
        self.refuse = False  # set: the link stops listening (new connections are refused)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._poller = select.poll()
        self._poller.register(self.listener, select.POLLIN)
        # fd -> (that socket, where its bytes go, whether it is the server's side)
        self._routes: dict[int, tuple[socket.socket, socket.socket, bool]] = {}
        self._closed: set[socket.socket] = set()  # server sides that closed (FIN)
        self._due: list[tuple[float, int, str, socket.socket, bytes]] = []
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.refuse and self.listener.fileno() >= 0:
                self._poller.unregister(self.listener)
                self.listener.close()
            wait_ms = 50 if not self._due else max(0, (self._due[0][0] - time.monotonic()) * 1000)
            for fd, _ in self._poller.poll(wait_ms):
                if fd == self.listener.fileno():
                    self._accept()
                elif fd in self._routes:
                    self._readable(*self._routes[fd])
            while self._due and self._due[0][0] <= time.monotonic():
                _, _, kind, dst, data = heapq.heappop(self._due)
                self._deliver(kind, dst, data)

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.target_port))
        self._socks += [client, server]
        self._routes[client.fileno()] = (client, server, False)
        self._routes[server.fileno()] = (server, client, True)
        self._poller.register(client, select.POLLIN)
        self._poller.register(server, select.POLLIN)

    def _later(self, kind: str, dst: socket.socket, data: bytes = b"") -> None:
        at = time.monotonic() + self.delay_s
        heapq.heappush(self._due, (at, next(_order), kind, dst, data))

    def _readable(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        if src in self._closed:  # after the server's FIN: only a reset can follow
            if src.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._later("reset", dst)
                self._drop(src)
            return
        try:
            data = src.recv(1 << 16)
        except OSError:
            self._later("reset", dst)
            self._drop(src)
            return
        if data:
            if not from_server and any(s is dst for s in self._closed):
                self.late_bytes += len(data)
            self._later("data", dst, data)
            return
        self._later("close", dst)
        if from_server:
            self._closed.add(src)
            self._poller.modify(src, 0)  # POLLERR and POLLHUP are always reported: the reset
        else:
            self._drop(src)

    def _drop(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._poller.unregister(sock)
        self._routes.pop(sock.fileno(), None)

    def _deliver(self, kind: str, dst: socket.socket, data: bytes) -> None:
        if dst.fileno() < 0:
            return
        with contextlib.suppress(OSError):
            if kind == "data":
                dst.sendall(data)
            elif kind == "close":
                dst.shutdown(socket.SHUT_WR)
            else:
                self._drop(dst)
                dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                dst.close()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()
        for sock in self._socks:
            sock.close()


_order = itertools.count()  # ties in the link's schedule keep the order things were sent in
