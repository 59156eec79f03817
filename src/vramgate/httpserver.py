"""The gateway's HTTP server protocol: uvicorn's httptools one, with what it writes to a client
within one turn of the event loop sent as one write.

Why: uvicorn writes an answer's status line and headers, then its body, as two writes; on
loopback each is a send() that runs the TCP stack for both ends, and the profile of the relay
(docs/benchmarks.md, "Relay profile") had those two writes at 18% of the gateway's CPU per
request. Merged, an answer is one send() and one segment. A stream's chunks go out at the end of
the loop turn that produced them, as before: nothing waits for a timer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class MergedWrites:
    """A transport whose writes in one loop turn go out as one; everything else is the
    transport's. Closing sends what is pending first."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._transport.is_closing():
            return  # the client is gone: nothing to send it
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # pause/resume_reading, get_extra_info, ...
        return getattr(self._transport, name)


class MergedWritesProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through MergedWrites."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        merged = MergedWrites(transport, self.loop)  # type: ignore[arg-type]
        super().connection_made(merged)  # type: ignore[arg-type]
