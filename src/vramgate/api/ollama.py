"""Ollama's generation routes: `POST /api/chat`, `/api/generate`, `/api/embed` and the older
`/api/embeddings`, translated to OpenAI's for the engine (ollama_convert.py) and back, NDJSON
streams included (ollama_stream.py); the same scheduling, keys, limits and metrics as every
other route, errors as Ollama sends them (`{"error": "..."}`).

`keep_alive` sets the model's idle time until its next stop (0: stopped once this request is
done; negative, or past a century: kept loaded), from a key that may unload it (an admin key, or
any with auth off; others' is ignored); an empty `messages` or `prompt` only loads the model (or,
with `keep_alive: 0`, unloads it: as every unload, an admin key's to ask, after the running
requests, never a pinned model), as Ollama's clients use it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from starlette.types import Send

from vramgate import inventory
from vramgate.api import common
from vramgate.api import ollama_convert as convert
from vramgate.api.ollama_stream import NdjsonStream
from vramgate.api.relaying import Endpoint, Routed
from vramgate.api.shapes import OLLAMA
from vramgate.auth import Access
from vramgate.engines.base import CHAT, COMPLETIONS, EMBEDDINGS
from vramgate.errors import BadRequest
from vramgate.proxy import Timing
from vramgate.scheduling.driver import Scheduler

_JSON = b"application/json"


class OllamaEndpoint(Endpoint):
    shape = OLLAMA

    async def label(self, scheduler: Scheduler, payload: dict[str, Any]) -> str:
        return await resolve_label(scheduler, payload["model"])

    async def answered(
        self,
        scheduler: Scheduler,
        access: Access,
        name: str,
        payload: dict[str, Any],
        send: Send,
        timing: Timing,
    ) -> bool:
        seconds = convert.keep_alive_s(payload.get("keep_alive"))
        if seconds is not None and not access.is_admin and not self.unloads(payload, seconds):
            # When a model stops is all its users' concern: only a key that may unload it sets
            # that; others' keep_alive is ignored (the configured ttl stays).
            seconds = None
        if not self.loads_only(payload):
            if seconds is not None:
                scheduler.keep_alive(name, seconds)
            return False
        if self.unloads(payload, seconds):
            await common.unload(scheduler, access, name)
            reason = "unload"
        else:
            await scheduler.ensure_ready(name)
            if seconds is not None:
                scheduler.keep_alive(name, seconds)
            reason = "load"
        line: dict[str, Any] = {"model": payload["model"], "created_at": convert.now_iso()}
        line.update(self.empty_answer(), done=True, done_reason=reason)
        body = orjson.dumps(line)
        timing.status = 200
        headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True

    def loads_only(self, payload: dict[str, Any]) -> bool:
        return False

    def unloads(self, payload: dict[str, Any], seconds: float | None) -> bool:
        """Ollama's unload: nothing to generate, and `keep_alive: 0`."""
        return seconds == 0 and self.loads_only(payload)

    def empty_answer(self) -> dict[str, Any]:
        return {}

    def routes_of(self, scheduler: Scheduler, name: str, route: str) -> tuple[str, bool]:
        """The engine's model name, and whether it takes images; 400 if it lacks `route`."""
        model = scheduler.settings.models[name]
        adapter = scheduler.adapters[model.engine]
        if route not in adapter.routes(model):
            raise BadRequest(f"model '{name}' (task: {model.task}) does not serve {self.path}")
        return adapter.upstream_model(name, model), adapter.takes_images(model) is not False


class ChatEndpoint(OllamaEndpoint):
    def loads_only(self, payload: dict[str, Any]) -> bool:
        return not payload.get("messages")

    def empty_answer(self) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": ""}}

    async def route(
        self, scheduler: Scheduler, name: str, label: str, payload: dict[str, Any], body: bytes
    ) -> Routed:
        upstream, vision = self.routes_of(scheduler, name, CHAT)
        chat = convert.chat_request(payload, upstream, vision)
        stream = chat.get("stream") is True
        mend = Answers(payload["model"], generate=False)
        return Routed(name, CHAT, orjson.dumps(chat), stream, mend, mend.stream.keepalive())


class GenerateEndpoint(OllamaEndpoint):
    def loads_only(self, payload: dict[str, Any]) -> bool:
        return not payload.get("prompt") and not payload.get("images")

    def empty_answer(self) -> dict[str, Any]:
        return {"response": ""}

    async def route(
        self, scheduler: Scheduler, name: str, label: str, payload: dict[str, Any], body: bytes
    ) -> Routed:
        upstream, vision = self.routes_of(scheduler, name, CHAT)
        is_chat, request = convert.generate_request(payload, upstream, vision)
        stream = request.get("stream") is True
        mend = Answers(payload["model"], generate=True, is_chat=is_chat)
        path = CHAT if is_chat else COMPLETIONS
        return Routed(name, path, orjson.dumps(request), stream, mend, mend.stream.keepalive())


class EmbedEndpoint(OllamaEndpoint):
    async def route(
        self, scheduler: Scheduler, name: str, label: str, payload: dict[str, Any], body: bytes
    ) -> Routed:
        upstream, _ = self.routes_of(scheduler, name, EMBEDDINGS)
        request = convert.embed_request(payload, upstream)
        old = self.path == "/api/embeddings"
        return Routed(name, EMBEDDINGS, orjson.dumps(request), False, Embedded(payload, old))


class Answers:
    """The engine's chat or completions answer as Ollama's, whole or as NDJSON lines."""

    def __init__(self, model: str, *, generate: bool, is_chat: bool = True) -> None:
        self.model, self.generate, self.is_chat = model, generate, is_chat
        self.began = time.perf_counter()
        self.stream = NdjsonStream(model, self.began, generate=generate, is_chat=is_chat)

    def whole(self, status: int, content_type: bytes, content: bytes) -> tuple[int, bytes, bytes]:
        answer = _answer(status, content)
        if isinstance(answer, tuple):
            return answer
        if self.generate:
            out = convert.generate_response(answer, self.model, self.began, self.is_chat)
        else:
            out = convert.chat_response(answer, self.model, self.began)
        return 200, _JSON, orjson.dumps(out)

    def chunk(self, data: bytes) -> bytes:
        return self.stream.feed(data)

    def end(self) -> bytes:
        return self.stream.end()


class Embedded(Answers):
    def __init__(self, payload: dict[str, Any], old: bool) -> None:
        super().__init__(payload["model"], generate=False)
        self.old = old

    def whole(self, status: int, content_type: bytes, content: bytes) -> tuple[int, bytes, bytes]:
        answer = _answer(status, content)
        if isinstance(answer, tuple):
            return answer
        out = convert.embed_response(answer, self.model, self.began, self.old)
        if out is None:  # the engine's error, in Ollama's shape
            return 502, _JSON, convert.error_line("the engine's embeddings answer has no usable "
                                                  "data").strip()  # fmt: skip
        return 200, _JSON, orjson.dumps(out)


def _answer(status: int, content: bytes) -> dict[str, Any] | tuple[int, bytes, bytes]:
    """The engine's JSON answer, or its error as Ollama's."""
    try:
        payload: Any = orjson.loads(content)
    except orjson.JSONDecodeError:
        payload = content.decode(errors="replace")
    if status < 400 and isinstance(payload, dict):
        return payload
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    message = error.get("message", error) if isinstance(error, dict) else error
    text = message if isinstance(message, str) else orjson.dumps(message).decode()
    return (
        (status if status >= 400 else 502),
        _JSON,
        convert.error_line(f"the engine answered {status}: {text}").strip(),
    )


async def resolve_label(scheduler: Scheduler, name: str) -> str:
    """An Ollama client's model name as the gateway knows it: `:latest` dropped, and a model
    pulled from the Hub (`hf.co/OWNER/REPO:QUANT`) as its file in models_dir."""
    label = convert.model_label(name)
    repo, quant = hub_name(label)
    if repo is None or scheduler.settings.resolve(label) is not None:
        return label
    root = Path(scheduler.settings.models_dir)
    found = await asyncio.to_thread(_pulled, root, repo, quant)
    return found or label


def hub_name(label: str) -> tuple[str | None, str | None]:
    """(OWNER/REPO, QUANT) of `hf.co/OWNER/REPO[:QUANT]` (or huggingface.co/...); else
    (None, None)."""
    for prefix in ("hf.co/", "huggingface.co/"):
        if label.startswith(prefix):
            repo, _, quant = label.removeprefix(prefix).partition(":")
            if repo.count("/") == 1:
                return repo, (quant.upper() or None) if quant != "latest" else None
    return None, None


def _pulled(root: Path, repo: str, quant: str | None) -> str | None:
    """The inventory name of REPO's model (of quantization `quant`, where it has several)."""
    entries = [e for e in inventory.scan(root) if e.name.startswith(repo + "/")]
    if quant is not None:
        entries = [e for e in entries if (e.quantization or "").upper() == quant]
    return entries[0].name if len(entries) == 1 or (entries and quant) else None


ROUTES = {
    "/api/chat": ChatEndpoint("/api/chat"),
    "/api/generate": GenerateEndpoint("/api/generate"),
    "/api/embed": EmbedEndpoint("/api/embed"),
    "/api/embeddings": EmbedEndpoint("/api/embeddings"),
}
