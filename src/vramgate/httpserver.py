"""The gateway's HTTP server protocol: uvicorn's httptools one, with what it writes to a client
within one turn of the event loop sent as one write.

Why: uvicorn writes an answer's status line and headers, then its body, as two writes; on
loopback each is a send() that runs the TCP stack for both ends, and the profile of the relay
(docs/benchmarks.md, "Relay profile") had those two writes at 18% of the gateway's CPU per
request. Merged, an answer is one send() and one segment. A stream's chunks go out at the end of
the loop turn that produced them, as before: nothing waits for a timer.

It also bounds how long a client may leave its answer unread (client_write_timeout): uvicorn's
send waits for the client's socket to drain with no bound, so a client that stopped reading (a
stopped process, a full window: the connection stays up) held its request, and its engine slot,
for ever. A connection whose writes stay paused that long is aborted: uvicorn sees a hang-up,
which cancels the request (the upstream request ends, the slot is freed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("vramgate")


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
    """uvicorn's httptools protocol writing through MergedWrites; `write_timeout_s` gives the
    client_write_timeout of the settings in force (a reload may change it)."""

    def __init__(self, *args: Any, write_timeout_s: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.write_timeout_s = write_timeout_s
        self.stalled: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        merged = MergedWrites(transport, self.loop)  # type: ignore[arg-type]
        super().connection_made(merged)  # type: ignore[arg-type]

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.stalled is None:
            timeout_s = self.write_timeout_s()
            self.stalled = self.loop.call_later(timeout_s, self._abort_stalled, timeout_s)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _stop_timer(self) -> None:
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None

    def _abort_stalled(self, timeout_s: float) -> None:
        self.stalled = None
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.warning(
            "%s read nothing of its answer for %g s (client_write_timeout): connection closed, "
            "its request cancelled",
            client,
            timeout_s,
        )
        self.transport.abort()  # not close(): that would wait for the client to read
