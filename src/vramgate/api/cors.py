"""CORS for the pages of `cors_origins`: their preflights answered by the gateway itself, and
Access-Control-* headers on every answer to them, whichever route (relayed, passthrough, own).

Credentials are allowed and the origin echoed (never `*`): a browser sends the page's
`Authorization` only then. Allowed headers echo the preflight's request list, since a `*` there
does not cover `Authorization` (Fetch standard), the header every API client sends.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vramgate.auth import origin_allowed

METHODS = b"GET, POST, DELETE, OPTIONS"  # llama-server's (cors_methods)
MAX_AGE_S = b"600"


class Cors:
    """ASGI middleware; `origins()` reads the current settings' cors_origins (a reload changes
    them; empty: the gateway answers no preflight and adds nothing)."""

    def __init__(self, app: ASGIApp, origins: Callable[[], list[str]]) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        allowed = self.origins()
        origin = asked_method = asked_headers = None
        if allowed:
            for key, value in scope["headers"]:
                if key == b"origin":
                    origin = value
                elif key == b"access-control-request-method":
                    asked_method = value
                elif key == b"access-control-request-headers":
                    asked_headers = value
        if origin is None:
            await self.app(scope, receive, send)
            return
        is_allowed = origin_allowed(origin.decode("latin-1"), allowed)
        if scope["method"] == "OPTIONS" and asked_method is not None:
            await self._preflight(send, origin if is_allowed else None, asked_headers)
            return
        if not is_allowed:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if not k.lower().startswith(b"access-control-")]  # fmt: skip
                headers += _allow(origin)
                headers.append((b"Access-Control-Expose-Headers", b"*"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, send: Send, origin: bytes | None, asked: bytes | None) -> None:
        """200 to every preflight (as llama-server answers); the Allow headers only for an
        allowed origin, so that a browser refuses the others."""
        headers = [(b"content-length", b"0")]
        if origin is None:
            headers.append((b"vary", b"Origin"))
        else:
            headers += _allow(origin)
            headers += [(b"Access-Control-Allow-Methods", METHODS),
                        (b"Access-Control-Allow-Headers", asked or b"*"),
                        (b"Access-Control-Max-Age", MAX_AGE_S)]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _allow(origin: bytes) -> list[tuple[bytes, bytes]]:
    # Spelled as llama-server spells them: clients that read headers into a plain dict (its own
    # tests do) look them up so.
    return [(b"Access-Control-Allow-Origin", origin),
            (b"Access-Control-Allow-Credentials", b"true"), (b"vary", b"Origin")]  # fmt: skip
