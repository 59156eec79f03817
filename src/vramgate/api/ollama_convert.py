"""Ollama's API to and from OpenAI's, for editors and tools that speak only Ollama's (VS Code
Copilot's Ollama provider, Zed, Open WebUI's Ollama connection): pure functions for requests and
answers, and the stream as a state machine that turns OpenAI's SSE (split anywhere) into Ollama's
NDJSON lines. No I/O. Names follow Ollama's `docs/api.md`.

Dropped, never a crash: options no engine takes (`mirostat`, `num_thread`, `numa`, ...),
`template` and `context` (a server-side prompt template and token context, which the engine's
own chat template replaces), `think` on models that do not think.
"""

from __future__ import annotations

import base64
import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from vramgate.api.guards import bounded_s
from vramgate.errors import BadRequest
from vramgate.sse import SseSplitter, data_lines

VERSION = "0.12.10"  # the Ollama API version whose routes and fields these follow
# Ollama's option -> the OpenAI (or engine extension) field it becomes; num_predict and stop
# are mapped apart. Others are dropped.
OPTIONS = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed",
    "min_p": "min_p", "repeat_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}  # fmt: skip
DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop"}
_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def model_label(name: str) -> str:
    """A name as Ollama clients send it, as the gateway knows it: `smollm2:latest` is
    `smollm2` (a tag other than `latest` is kept: it may be part of a configured name)."""
    return name.removesuffix(":latest")


def listed_name(name: str) -> str:
    """A model's name as Ollama lists it: with a tag (`:latest` where it has none)."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def keep_alive_s(value: Any) -> float | None:
    """Ollama's keep_alive in seconds: a number of seconds or a Go duration ("5m", "1h30m",
    "-1m"); negative (or past the bound, guards.bounded_s) = keep it loaded, -1; None when the
    request has none."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest("keep_alive: a number of seconds or a duration such as '5m'")
    if isinstance(value, int | float):
        return bounded_s(float(value), "keep_alive")
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return bounded_s(float(text), "keep_alive")
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return bounded_s(sum(float(n) * _UNITS[u] for n, u in parts), "keep_alive")
    raise BadRequest(f"keep_alive: {value!r} is not a number of seconds or a duration ('5m')")


def options_of(body: dict[str, Any]) -> dict[str, Any]:
    """The request's `options` as OpenAI fields (num_predict -> max_tokens, stop)."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("options: must be an object")
    out = {OPTIONS[k]: v for k, v in options.items() if k in OPTIONS and v is not None}
    predict = options.get("num_predict")
    if isinstance(predict, int) and not isinstance(predict, bool) and predict > 0:
        out["max_tokens"] = predict  # -1 (no limit) and -2 (fill the context): the engine's
    stop = options.get("stop")
    if isinstance(stop, str):
        out["stop"] = [stop]
    elif isinstance(stop, list):
        out["stop"] = [s for s in stop if isinstance(s, str)]
    return out


def _format(fmt: Any) -> dict[str, Any] | None:
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt}}
    raise BadRequest("format: 'json' or a JSON schema object")


def image_url(data: Any, vision: bool) -> dict[str, Any]:
    """One of Ollama's images (bare base64) as an OpenAI image part, its type read from its
    first bytes."""
    if not vision:
        raise BadRequest("this model does not take images (its `vision` is off)")
    if not isinstance(data, str):
        raise BadRequest("images: each image is a base64 string")
    try:
        head = base64.b64decode(data[:32] + "=" * (-len(data[:32]) % 4))
    except ValueError:
        raise BadRequest("images: not base64") from None
    kind = (
        "png"
        if head.startswith(b"\x89PNG")
        else "gif"
        if head.startswith(b"GIF8")
        else ("webp" if head[8:12] == b"WEBP" else "jpeg")
    )
    return {"type": "image_url", "image_url": {"url": f"data:image/{kind};base64,{data}"}}


def chat_request(body: dict[str, Any], upstream: str, vision: bool = True) -> dict[str, Any]:
    """An /api/chat request as a chat completions request (streamed unless `stream: false`,
    as Ollama's default is)."""
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise BadRequest("messages: must be a list")
    out: list[dict[str, Any]] = []
    calls = 0  # Ollama's tool calls carry no ids: made up, and tool results matched in order
    pending: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}]: needs a role")
        role, content = message["role"], message.get("content") or ""
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content: must be a string")
        converted: dict[str, Any] = {"role": role, "content": content}
        images = message.get("images") or []
        if images:
            parts: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
            converted["content"] = parts + [image_url(img, vision) for img in images]
        if role == "assistant" and message.get("tool_calls"):
            converted["tool_calls"] = []
            for call in message["tool_calls"]:
                function = (call or {}).get("function") or {}
                calls += 1
                ident = f"call_{calls}"
                pending.append(ident)
                arguments = function.get("arguments") or {}
                converted["tool_calls"].append({"id": ident, "type": "function", "function": {
                    "name": function.get("name", ""),
                    "arguments": arguments if isinstance(arguments, str) else _dumps(arguments),
                }})  # fmt: skip
        if role == "tool":
            converted["tool_call_id"] = pending.pop(0) if pending else f"call_{calls}"
        out.append(converted)
    chat: dict[str, Any] = {"model": upstream, "messages": out, **options_of(body)}
    if body.get("tools"):
        chat["tools"] = [t for t in body["tools"] if isinstance(t, dict)]
    fmt = _format(body.get("format"))
    if fmt is not None:
        chat["response_format"] = fmt
    if body.get("stream", True) is not False:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def generate_request(
    body: dict[str, Any], upstream: str, vision: bool = True
) -> tuple[bool, dict[str, Any]]:
    """An /api/generate request: (is_chat, the OpenAI request). `raw` prompts go to
    completions as they are; others are one user turn (with `system`) through the model's chat
    template, as Ollama applies its template."""
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRequest("prompt: must be a string")
    stream = body.get("stream", True) is not False
    if body.get("raw"):
        out: dict[str, Any] = {"model": upstream, "prompt": prompt, **options_of(body)}
        if isinstance(body.get("suffix"), str) and body["suffix"]:
            out["suffix"] = body["suffix"]
        if stream:
            out["stream"] = True
            out["stream_options"] = {"include_usage": True}
        return False, out
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("system"), str) and body["system"]:
        messages.append({"role": "system", "content": body["system"]})
    messages.append({"role": "user", "content": prompt, "images": body.get("images") or []})
    chat = chat_request({**body, "messages": messages, "stream": stream}, upstream, vision)
    return True, chat


def embed_request(body: dict[str, Any], upstream: str) -> dict[str, Any]:
    """/api/embed (`input`: a string or a list) or the older /api/embeddings (`prompt`)."""
    value = body.get("input", body.get("prompt"))
    if isinstance(value, str) or (
        isinstance(value, list) and value and all(isinstance(v, str) for v in value)
    ):
        out: dict[str, Any] = {"model": upstream, "input": value}
        if isinstance(body.get("dimensions"), int):
            out["dimensions"] = body["dimensions"]
        return out
    raise BadRequest("input: a string or a non-empty list of strings")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _arguments(value: Any) -> Any:
    if isinstance(value, dict):
        return value
    try:
        parsed = orjson.loads(value or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": value}
    return parsed if isinstance(parsed, dict) else {"_value": parsed}


def _tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"function": {"name": (c.get("function") or {}).get("name", ""),
                      "arguments": _arguments((c.get("function") or {}).get("arguments"))}}
        for c in calls
    ]  # fmt: skip


def stats(usage: dict[str, Any], began: float, timings: dict[str, Any] | None) -> dict[str, Any]:
    """Ollama's counts and durations (nanoseconds); the engine's own timings where it gives
    them (llama-server does), else the time since the request arrived."""
    total_ns = int((time.perf_counter() - began) * 1e9)
    prompt_ms = (timings or {}).get("prompt_ms")
    predicted_ms = (timings or {}).get("predicted_ms")
    return {
        "total_duration": total_ns,
        "load_duration": 0,
        "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
        "prompt_eval_duration": int((prompt_ms or 0) * 1e6),
        "eval_count": int(usage.get("completion_tokens") or 0),
        "eval_duration": int(predicted_ms * 1e6) if predicted_ms else total_ns,
    }


def chat_response(answer: dict[str, Any], model: str, began: float) -> dict[str, Any]:
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    out_message: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("reasoning_content"):
        out_message["thinking"] = message["reasoning_content"]
    if message.get("tool_calls"):
        out_message["tool_calls"] = _tool_calls(message["tool_calls"])
    reason = DONE_REASONS.get(choice.get("finish_reason") or "stop", "stop")
    return {"model": model, "created_at": now_iso(), "message": out_message, "done": True,
            "done_reason": reason,
            **stats(answer.get("usage") or {}, began, answer.get("timings"))}  # fmt: skip


def generate_response(
    answer: dict[str, Any], model: str, began: float, is_chat: bool
) -> dict[str, Any]:
    choice = (answer.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") if is_chat else choice.get("text")
    reason = DONE_REASONS.get(choice.get("finish_reason") or "stop", "stop")
    return {"model": model, "created_at": now_iso(), "response": text or "", "done": True,
            "done_reason": reason,
            **stats(answer.get("usage") or {}, began, answer.get("timings"))}  # fmt: skip


def embed_response(answer: dict[str, Any], model: str, began: float, old: bool) -> dict[str, Any]:
    vectors = [d.get("embedding") for d in sorted(answer.get("data") or [],
                                                  key=lambda d: d.get("index", 0))]  # fmt: skip
    if old:  # /api/embeddings: one vector
        return {"embedding": vectors[0] if vectors else []}
    usage = answer.get("usage") or {}
    total = int((time.perf_counter() - began) * 1e9)
    return {"model": model, "embeddings": vectors, "total_duration": total, "load_duration": 0,
            "prompt_eval_count": int(usage.get("prompt_tokens") or 0)}  # fmt: skip


def error_line(message: str) -> bytes:
    return orjson.dumps({"error": message}) + b"\n"


class NdjsonStream:
    """OpenAI chat (or completions) chunks in, Ollama's NDJSON lines out: one line per piece of
    text, tool calls in one line once their arguments are whole, then the `done` line with the
    counts. `generate`: /api/generate's `response` lines, else /api/chat's `message` lines."""

    def __init__(self, model: str, began: float, *, generate: bool, is_chat: bool = True) -> None:
        self.model, self.began = model, began
        self.generate, self.is_chat = generate, is_chat
        self.events = SseSplitter()
        self.calls: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] = {}
        self.timings: dict[str, Any] | None = None
        self.finish = "stop"
        self.done = False

    def feed(self, data: bytes) -> bytes:
        events, _ = self.events.feed(data)
        return b"".join(self._event(e) for e in events)

    def end(self) -> bytes:
        out = self._event(rest) if (rest := self.events.rest()) else b""
        return out + self._done()

    def keepalive(self) -> bytes:
        """A line that adds nothing (sent while the engine starts)."""
        return self._line("", None)

    def _line(self, text: str, calls: list[dict[str, Any]] | None) -> bytes:
        line: dict[str, Any] = {"model": self.model, "created_at": now_iso()}
        if self.generate:
            line["response"] = text
        else:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = calls
            line["message"] = message
        line["done"] = False
        return orjson.dumps(line) + b"\n"

    def _event(self, event: bytes) -> bytes:
        data = data_lines(event)
        if data is None or data.strip() == b"[DONE]":
            return b""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return b""
        if not isinstance(chunk, dict):
            return b""
        if isinstance(chunk.get("error"), dict):
            self.done = True
            return error_line(str(chunk["error"].get("message", "the engine failed")))
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        if isinstance(chunk.get("timings"), dict):
            self.timings = chunk["timings"]
        out = b""
        for choice in chunk.get("choices") or ():
            delta = (choice.get("delta") or {}) if self.is_chat else {"content": choice.get("text")}
            if delta.get("content"):
                out += self._line(delta["content"], None)
            for call in delta.get("tool_calls") or ():
                held = self.calls.setdefault(call.get("index", 0), {"name": "", "arguments": ""})
                function = call.get("function") or {}
                held["name"] += function.get("name") or ""
                held["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _done(self) -> bytes:
        if self.done:
            return b""
        self.done = True
        out = b""
        if self.calls:
            calls = _tool_calls([{"function": c} for _, c in sorted(self.calls.items())])
            out += self._line("", calls)
        line: dict[str, Any] = {"model": self.model, "created_at": now_iso()}
        if self.generate:
            line["response"] = ""
        else:
            line["message"] = {"role": "assistant", "content": ""}
        line.update(done=True, done_reason=DONE_REASONS.get(self.finish, "stop"),
                    **stats(self.usage, self.began, self.timings))  # fmt: skip
        return out + orjson.dumps(line) + b"\n"
