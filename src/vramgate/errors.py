"""Errors the gateway answers with, each mapped once to an HTTP status and OpenAI's error shape.

GatewayError                 {"error": {"message", "type", "code"}}
├── BadRequest               400 malformed JSON, no `model`, a route the model does not serve
├── Unauthorized             401 no key, or a key that is not configured
├── Forbidden                403 a valid key that does not open this model or route
├── ModelNotFound            404 unknown model; the message lists the known names
├── Conflict                 409 a reload or download that clashes with the current state
├── PayloadTooLarge          413 body over max_body_mb
├── UnsupportedMediaType     415 a body that is not JSON where JSON is required
├── QueueFull                429 max_concurrency reached and the wait queue is full
├── EngineUnavailable        502 the engine died or dropped the connection mid-request
│   ├── EngineGone           502 the engine refused the connection: nothing reached it
│   └── EngineReset          502 reset unanswered: tried again if the engine is gone
├── EngineStartFailed        503 the engine exited while starting or never became ready
├── Unloaded                 503 the model was stopped (unload, shutdown) while starting
├── NoRoom                   507 larger than any GPU (insufficient_gpu_memory)
│   └── NoHostRoom           507 larger than host RAM (insufficient_host_memory)
└── GatewayBusy              503 no room: every engine that could make way is busy

An error may carry a `detail` that only admin keys see: an engine's last output lines.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.detail = detail

    def body(self, *, detail: bool = False) -> dict[str, Any]:
        """OpenAI's error shape; `detail` (engine output) only for those allowed to see logs."""
        message = self.message
        if self.detail:
            message += f"\n{self.detail}" if detail else " (engine output: admin log route)"
        return error_body(message, self.type, self.code)


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "bad_request"


class Unauthorized(GatewayError):
    status = 401
    # llama-server's and Anthropic's type for it (OpenAI's says invalid_request_error; its SDK
    # and every client read the status and the code, which stay OpenAI's).
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class QueueFull(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class EngineUnavailable(GatewayError):
    status = 502
    type = "server_error"
    code = "engine_unavailable"


class EngineFailed(EngineUnavailable):
    """The engine answered a streamed request with an error after the stream had begun."""


class EngineGone(EngineUnavailable):
    """Raised before anything was sent to the engine or the client: safe to try again."""


class EngineReset(EngineUnavailable):
    """The engine's connection was reset unanswered (upstream.ResetUnanswered): nothing was
    sent to the client; safe to try again once the engine's exit is seen, else a 502."""


class EngineStartFailed(GatewayError):
    status = 503
    type = "server_error"
    code = "engine_start_failed"


class EngineOutOfMemory(EngineStartFailed):
    code = "engine_out_of_memory"


class NodeLost(EngineStartFailed):
    """The cluster node a start was placed on died (or its agent did) under it: placed anew."""


class Unloaded(GatewayError):
    status = 503
    type = "server_error"
    code = "model_unloaded"


class NoRoom(GatewayError):
    status = 507
    type = "server_error"
    code = "insufficient_gpu_memory"


class NoHostRoom(NoRoom):
    """No room in host RAM (host_ram_mib, a node's RAM): the same 507, a code of its own."""

    code = "insufficient_host_memory"


class GatewayBusy(GatewayError):
    status = 503
    type = "server_error"
    code = "gateway_busy"


def error_body(message: str, type_: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": None}}


def sse_error_event(exc: GatewayError) -> bytes:
    """The last event of a stream that broke: clients that read SSE see why it ended."""
    return b"data: " + orjson.dumps(exc.body()) + b"\n\n"
