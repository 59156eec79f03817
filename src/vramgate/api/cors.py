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

METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
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
                headers.append((b"access-control-expose-headers", b"*"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, send: Send, origin: bytes | None, asked: bytes | None) -> None:
        """200 to every preflight (as llama-server answers); the Allow headers only for an
        allowed origin, so that a browser refuses the others."""
        headers = [(b"content-length", b"0"), (b"vary", b"Origin")]
        if origin is not None:
            headers += _allow(origin)
            headers += [(b"access-control-allow-methods", METHODS),
                        (b"access-control-allow-headers", asked or b"*"),
                        (b"access-control-max-age", MAX_AGE_S)]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _allow(origin: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin),
            (b"access-control-allow-credentials", b"true"), (b"vary", b"Origin")]  # fmt: skip
