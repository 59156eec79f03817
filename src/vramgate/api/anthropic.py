"""Anthropic's Messages API: `POST /v1/messages` and `/v1/messages/count_tokens`, for coding agents
(Claude Code sends every turn to `/v1/messages?beta=true`) and the `anthropic` SDK.

Relayed as they are where the engine serves them (llama-server, vLLM, SGLang: the registry
says so, or a model's `native_apis`), else translated to and from chat completions
(anthropic_convert.py, anthropic_stream.py). Same scheduling, keys, limits and metrics as the
OpenAI routes; errors in Anthropic's shape. The `anthropic-version` and `anthropic-beta`
headers are accepted and need nothing: what a beta adds to a body is relayed, or dropped by the
translation.
"""

from __future__ import annotations

from typing import Any

import orjson

from vramgate.api import anthropic_convert as convert
from vramgate.api.anthropic_stream import MessageStream
from vramgate.api.relaying import Endpoint, Routed
from vramgate.api.shapes import ANTHROPIC, anthropic_status
from vramgate.config import ModelConfig
from vramgate.engines.base import CHAT, COUNT_TOKENS, MESSAGES, EngineAdapter
from vramgate.errors import BadRequest
from vramgate.scheduling.driver import Scheduler
from vramgate.sse import EVENT_END, SseSplitter, data_lines

_JSON = b"application/json"


class MessagesEndpoint(Endpoint):
    """POST /v1/messages."""

    shape = ANTHROPIC

    async def route(
        self, scheduler: Scheduler, name: str, label: str, payload: dict[str, Any], body: bytes
    ) -> Routed:
        model, adapter = _chat_model(scheduler, name)
        is_stream = payload.get("stream") is True
        context = context_length(scheduler, name, model, adapter)
        upstream = adapter.upstream_model(name, model)
        if adapter.serves_natively(model, "anthropic"):
            # The engine judges the request itself (llama-server takes an empty `messages`).
            max_tokens = payload.get("max_tokens")
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
                max_tokens = None
            if context is not None and max_tokens is not None and max_tokens > context:
                payload["max_tokens"] = context  # capped, not refused
            payload["model"] = upstream
            return Routed(name, self.path, orjson.dumps(payload), is_stream, NativeErrors())
        images = adapter.takes_images(model)
        chat = convert.to_chat_request(
            payload, upstream, context=context, vision=images is not False
        )
        stops = [s for s in payload.get("stop_sequences") or () if isinstance(s, str)]
        mend = Translated(label, stops)
        return Routed(name, CHAT, orjson.dumps(chat), is_stream, mend)


class CountTokensEndpoint(Endpoint):
    """POST /v1/messages/count_tokens: the engine's own count where it has the route, else a
    one-token chat completion's prompt tokens (the engine's own tokenizer, one prefill)."""

    shape = ANTHROPIC

    async def route(
        self, scheduler: Scheduler, name: str, label: str, payload: dict[str, Any], body: bytes
    ) -> Routed:
        model, adapter = _chat_model(scheduler, name)
        upstream = adapter.upstream_model(name, model)
        payload["model"] = upstream
        if adapter.serves_natively(model, "anthropic"):
            return Routed(name, self.path, orjson.dumps(payload), False, NativeErrors())
        payload.update(max_tokens=1, stream=False)
        chat = convert.to_chat_request(payload, upstream)
        chat["max_tokens"] = 1
        return Routed(name, CHAT, orjson.dumps(chat), False, Counted())


def _chat_model(scheduler: Scheduler, name: str) -> tuple[ModelConfig, EngineAdapter]:
    model = scheduler.settings.models[name]
    adapter = scheduler.adapters[model.engine]
    if CHAT not in adapter.routes(model):
        raise BadRequest(f"model '{name}' (task: {model.task}) does not serve messages")
    return model, adapter


def context_length(
    scheduler: Scheduler, name: str, model: ModelConfig, adapter: EngineAdapter
) -> int | None:
    """The model's context: its arguments', else its metadata's (a GGUF's, config.json's)."""
    found = adapter.context_length(model)
    if found is not None:
        return found
    estimate = scheduler.memory.estimates.get(name)
    return estimate.context if estimate is not None and estimate.context > 0 else None


class NativeErrors:
    """An engine's own Messages answers as they are, but its errors (llama-server's
    {"error": {"code": 400, ...}}, a text/plain 500) in Anthropic's shape, as a client of
    Anthropic's API reads them; mid-stream too: an error event in the engine's shape (OpenAI's
    `data: {"error": ...}`, which Anthropic's SDK skips as an unnamed event, so the answer just
    stopped) becomes Anthropic's `event: error`, which the SDK raises. A stream is passed on
    event by event (a partial one waits for its blank line)."""

    def __init__(self) -> None:
        self.events = SseSplitter()  # past 8 MiB an event is passed on as it comes

    def whole(self, status: int, content_type: bytes, content: bytes) -> tuple[int, bytes, bytes]:
        return engine_error(status, content) if status >= 400 else (status, content_type, content)

    def chunk(self, data: bytes) -> bytes:
        events, raw = self.events.feed(data)
        return b"".join(native_event(e) for e in events) + raw

    def end(self) -> bytes:
        rest = self.events.rest()
        return native_event(rest) if rest else b""


def native_event(event: bytes) -> bytes:
    """One event of an engine's own Messages stream, an error in the engine's shape mended."""
    if b"error" not in event:  # nearly every event: no parse
        return event + EVENT_END
    lines = event.split(b"\n")
    named = next((line[6:].strip() for line in lines if line.startswith(b"event:")), b"")
    data = data_lines(event) or b""
    try:
        payload: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        payload = None
    fields: dict[str, Any] = payload if isinstance(payload, dict) else {}
    inner = fields.get("error")
    inner_fields: dict[str, Any] = inner if isinstance(inner, dict) else {}
    if fields.get("type") == "error":
        kind, message = inner_fields.get("type"), inner_fields.get("message")
        if isinstance(kind, str) and isinstance(message, str):
            return event + EVENT_END  # Anthropic's shape already
    elif named != b"error" and ("type" in fields or "error" not in fields):
        return event + EVENT_END  # an event that merely mentions an error (a text delta)
    code = inner_fields.get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    _, _, body = engine_error(status, data)
    return b"event: error\ndata: " + body + EVENT_END


class Translated:
    """A chat completion's answer as an Anthropic message (whole, or streamed event by event)."""

    def __init__(self, model: str, stops: list[str]) -> None:
        self.model, self.stops = model, stops
        self.stream = MessageStream(model, stops)

    def whole(self, status: int, content_type: bytes, content: bytes) -> tuple[int, bytes, bytes]:
        if status >= 400:
            return engine_error(status, content)
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError:
            return engine_error(502, content)
        message = convert.from_chat_response(answer, self.model, self.stops)
        return 200, _JSON, orjson.dumps(message)

    def chunk(self, data: bytes) -> bytes:
        return self.stream.feed(data)

    def end(self) -> bytes:
        return self.stream.end()


class Counted(Translated):
    def __init__(self) -> None:
        super().__init__("", [])

    def whole(self, status: int, content_type: bytes, content: bytes) -> tuple[int, bytes, bytes]:
        if status >= 400:
            return engine_error(status, content)
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError:
            return engine_error(502, content)
        return 200, _JSON, orjson.dumps(convert.count_from_usage(answer))


def engine_error(status: int, content: bytes) -> tuple[int, bytes, bytes]:
    """An engine's error answer (OpenAI's shape, FastAPI's, or text) in Anthropic's shape."""
    try:
        payload: Any = orjson.loads(content)
    except orjson.JSONDecodeError:
        payload = content.decode(errors="replace")
    message = payload
    if isinstance(payload, dict):
        inner = payload.get("error")
        message = inner.get("message", inner) if isinstance(inner, dict) else inner
        message = message or payload.get("detail") or payload
    text = message if isinstance(message, str) else orjson.dumps(message).decode()
    # An engine's 4xx is the request's fault (an image a text model cannot take, a context too
    # long): the client's 400 unless Anthropic has a type of its own for it.
    error_status, kind = anthropic_status(status if status in (401, 403, 404, 429) else 400)
    if status >= 500:
        error_status, kind = 500, "api_error"
    body = {
        "type": "error",
        "error": {"type": kind, "message": f"the engine answered {status}: {text}"},
    }
    return error_status, _JSON, orjson.dumps(body)


ROUTES = {MESSAGES: MessagesEndpoint(MESSAGES), COUNT_TOKENS: CountTokensEndpoint(COUNT_TOKENS)}
