"""How each client API wants to hear of errors, of a stream that broke, and of a wait: OpenAI's,
Anthropic's and Ollama's shapes, chosen by the route a request came in on. One table maps the
gateway's errors (errors.py) onto each API's own types and status codes."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from vramgate.errors import GatewayError, sse_error_event

# Anthropic's error types by the gateway's status (docs: "Errors"): it has no 502/503/507; an
# engine or start that failed is its `api_error` (500), no room for now its `overloaded_error`.
_ANTHROPIC = {
    400: (400, "invalid_request_error"),
    401: (401, "authentication_error"),
    403: (403, "permission_error"),
    404: (404, "not_found_error"),
    409: (409, "invalid_request_error"),
    413: (413, "request_too_large"),
    415: (400, "invalid_request_error"),
    429: (429, "rate_limit_error"),
}
_OVERLOADED = ("gateway_busy",)  # codes that are Anthropic's 529: retry later, nothing is wrong


@dataclass(frozen=True)
class Shape:
    name: str
    stream_type: bytes

    def error(self, exc: GatewayError, *, detail: bool = False) -> tuple[int, bytes]:
        """(status, JSON body) of an error answered before anything else was sent."""
        if self.name == "anthropic":
            status, kind = anthropic_status(exc.status, exc.code)
            body = {"type": "error", "error": {"type": kind, "message": _message(exc, detail)}}
            return status, orjson.dumps(body)
        if self.name == "ollama":
            return exc.status, orjson.dumps({"error": _message(exc, detail)})
        return exc.status, orjson.dumps(exc.body(detail=detail))

    def stream_error(self, exc: GatewayError) -> bytes:
        """The last piece of a stream that broke after its headers were sent."""
        if self.name == "anthropic":
            _, kind = anthropic_status(exc.status, exc.code)
            error = {"type": "error", "error": {"type": kind, "message": exc.message}}
            return b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"
        if self.name == "ollama":
            return orjson.dumps({"error": exc.message}) + b"\n"
        return sse_error_event(exc)

    @property
    def keepalive(self) -> bytes:
        """Sent every stream_keepalive_s while a streamed request waits for its engine."""
        if self.name == "anthropic":
            return b'event: ping\ndata: {"type": "ping"}\n\n'
        return (
            b": keep-alive\n\n"  # an SSE comment: clients skip it (Ollama's routes send their own)
        )


def anthropic_status(status: int, code: str = "") -> tuple[int, str]:
    """Anthropic's status and error type for the gateway's (or an engine's) status."""
    if code in _OVERLOADED:
        return 529, "overloaded_error"
    return _ANTHROPIC.get(status, (500, "api_error"))


def _message(exc: GatewayError, detail: bool) -> str:
    message = exc.message
    if exc.detail:
        message += f"\n{exc.detail}" if detail else " (engine output: admin log route)"
    return message


OPENAI = Shape("openai", b"text/event-stream")
ANTHROPIC = Shape("anthropic", b"text/event-stream")
OLLAMA = Shape("ollama", b"application/x-ndjson")


def shape_of(path: str) -> Shape:
    """The error shape of the client API a path belongs to."""
    if path.startswith("/api/"):
        return OLLAMA
    return ANTHROPIC if path.startswith("/v1/messages") else OPENAI
