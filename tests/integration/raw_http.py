"""Reads HTTP/1.1 requests off a blocking socket, one after another: what every raw engine of
these tests (the scripts beside this file, run as files) and the scripted server need of a
request, its head and its body, without an HTTP library between the test and the bytes."""

from __future__ import annotations

import socket


class RequestReader:
    """The requests one connection sends, in order; `next()` is None at EOF."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""  # what came after the last request read (a pipelined one)

    def recv(self) -> bool:
        """More bytes, or False at EOF (or a reset)."""
        try:
            data = self.conn.recv(65536)
        except OSError:
            return False
        self.buffer += data
        return bool(data)

    def next(self) -> tuple[bytes, bytes] | None:
        """The next request's head (request line and headers, without the blank line) and its
        body (Content-Length's worth; none without it); None where the peer closed first."""
        while b"\r\n\r\n" not in self.buffer:
            if not self.recv():
                return None
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buffer) < length:
            if not self.recv():
                return None
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return head, body
