"""Ollama's API to and from OpenAI's, for editors and tools that speak only Ollama's (VS Code
Copilot's Ollama provider, Zed, Open WebUI's Ollama connection): pure functions for requests and
answers (ollama_stream.py turns OpenAI's stream into Ollama's NDJSON lines). No I/O. Every field
a request's translation reads is checked first: a wrong type is a 400 that names it. Names
follow Ollama's `docs/api.md`.

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

from vramgate.api.checks import (
    count,
    is_integer,
    is_number,
    nanoseconds,
    optional,
    reasoning_of,
    require,
    strings,
    text,
    tool_arguments,
)
from vramgate.api.guards import bounded_s
from vramgate.errors import BadRequest

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
    for key in out.keys() & OPTIONS.keys():  # Ollama refuses a wrong type the same way
        require(is_integer(out[key]) if key == "seed" else is_number(out[key]),
                f"options.{key}", "must be a number")  # fmt: skip
    predict = options.get("num_predict")
    require(predict is None or is_integer(predict), "options.num_predict", "must be an integer")
    if is_integer(predict) and predict > 0:
        out["max_tokens"] = predict  # -1 (no limit) and -2 (fill the context): the engine's
    stop = options.get("stop")
    if isinstance(stop, str):
        out["stop"] = [stop]
    elif stop is not None:
        out["stop"] = strings(stop, "options.stop", sep="[")
    return out


def _format(fmt: Any) -> dict[str, Any] | None:
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt}}
    raise BadRequest("format: 'json' or a JSON schema object")


def image_url(data: Any, vision: bool, path: str = "images") -> dict[str, Any]:
    """One of Ollama's images (bare base64) as an OpenAI image part, its type read from its
    first bytes."""
    if not vision:
        raise BadRequest("this model does not take images (its `vision` is off)")
    if not isinstance(data, str):
        raise BadRequest(f"{path}: each image is a base64 string")
    try:
        head = base64.b64decode(data[:32] + "=" * (-len(data[:32]) % 4))
    except ValueError:
        raise BadRequest(f"{path}: not base64") from None
    kind = (
        "png"
        if head.startswith(b"\x89PNG")
        else "gif"
        if head.startswith(b"GIF8")
        else ("webp" if head[8:12] == b"WEBP" else "jpeg")
    )
    return {"type": "image_url", "image_url": {"url": f"data:image/{kind};base64,{data}"}}


ROLES = ("system", "user", "assistant", "tool")


def chat_request(body: dict[str, Any], upstream: str, vision: bool = True) -> dict[str, Any]:
    """An /api/chat request as a chat completions request (streamed unless `stream: false`,
    as Ollama's default is). Each field read is checked first: a wrong type is a 400 naming
    it. A message's `thinking` (a reasoning model's, sent back) is dropped: templates drop it."""
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise BadRequest("messages: must be a list")
    out: list[dict[str, Any]] = []
    calls = 0  # Ollama's tool calls carry no ids: made up, and tool results matched in order
    pending: list[str] = []
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{path}: must be a message object with a role")
        role, content = message.get("role"), message.get("content") or ""
        require(role in ROLES, f"{path}.role", "needs a role: system, user, assistant or tool")
        require(isinstance(content, str), f"{path}.content", "must be a string")
        converted: dict[str, Any] = {"role": role, "content": content}
        images = message.get("images") or []
        require(isinstance(images, list), f"{path}.images", "must be a list of base64 strings")
        if images:
            # OpenAI takes images in user turns only (engines' chat templates likewise)
            require(role == "user", f"{path}.images", "only a user message may carry images")
            parts: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
            converted["content"] = parts + [
                image_url(img, vision, f"{path}.images[{j}]") for j, img in enumerate(images)
            ]
        wanted = _tool_calls_in(message.get("tool_calls"), f"{path}.tool_calls")
        if role == "assistant" and wanted:
            converted["tool_calls"] = []
            for function in wanted:
                calls += 1
                ident = f"call_{calls}"
                pending.append(ident)
                arguments = function.get("arguments") or {}
                converted["tool_calls"].append({"id": ident, "type": "function", "function": {
                    "name": function["name"],
                    "arguments": arguments if isinstance(arguments, str) else _dumps(arguments),
                }})  # fmt: skip
        if role == "tool":
            converted["tool_call_id"] = pending.pop(0) if pending else f"call_{calls}"
        out.append(converted)
    chat: dict[str, Any] = {"model": upstream, "messages": out, **options_of(body)}
    tools = body.get("tools")
    if tools:
        chat["tools"] = _tools(tools)
    fmt = _format(body.get("format"))
    if fmt is not None:
        chat["response_format"] = fmt
    if body.get("stream", True) is not False:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _tool_calls_in(calls: Any, path: str) -> list[dict[str, Any]]:
    """A message's tool calls' functions, each checked (a name, arguments an object)."""
    if calls is None:
        return []
    require(isinstance(calls, list), path, "must be a list of tool calls")
    functions = []
    for j, call in enumerate(calls):
        where = f"{path}[{j}]"
        require(isinstance(call, dict), where, "must be a tool call object")
        function = _named_function(call, where)
        optional(function.get("arguments"), dict | str, f"{where}.function.arguments",
                 "must be an object")  # fmt: skip
        functions.append(function)
    return functions


def _named_function(holder: dict[str, Any], where: str) -> dict[str, Any]:
    """A tool's or a tool call's `function`: an object with a string `name` (400 otherwise)."""
    function = holder.get("function")
    if not isinstance(function, dict):
        raise BadRequest(f"{where}.function: must be an object with a name")
    require(isinstance(function.get("name"), str), f"{where}.function.name", "must be a string")
    return function


def _tools(tools: Any) -> list[dict[str, Any]]:
    """Ollama's tools are OpenAI's: each checked, and typed `function` where it says nothing."""
    require(isinstance(tools, list), "tools", "must be a list of tools")
    out = []
    for i, tool in enumerate(tools):
        path = f"tools[{i}]"
        require(isinstance(tool, dict), path, "must be a tool object")
        function = _named_function(tool, path)
        optional(function.get("description"), str, f"{path}.function.description",
                 "must be a string")  # fmt: skip
        optional(function.get("parameters"), dict, f"{path}.function.parameters",
                 "must be an object")  # fmt: skip
        require(tool.get("type", "function") == "function", f"{path}.type", "must be 'function'")
        # what OpenAI's function takes, nulls dropped (OpenAI refuses a null description)
        kept = {k: v for k, v in function.items() if v is not None}
        out.append({"type": "function", "function": kept})
    return out


def generate_request(
    body: dict[str, Any], upstream: str, vision: bool = True
) -> tuple[bool, dict[str, Any]]:
    """An /api/generate request: (is_chat, the OpenAI request). `raw` prompts go to
    completions as they are; others are one user turn (with `system`) through the model's chat
    template, as Ollama applies its template."""
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRequest("prompt: must be a string")
    for key in ("system", "suffix"):
        optional(body.get(key), str, key, "must be a string")
    optional(body.get("images"), list, "images", "must be a list of base64 strings")
    optional(body.get("raw"), bool, "raw", "must be true or false")
    stream = body.get("stream", True) is not False
    if body.get("raw"):
        out: dict[str, Any] = {"model": upstream, "prompt": prompt, **options_of(body)}
        if body.get("suffix"):
            out["suffix"] = body["suffix"]
        if stream:
            out["stream"] = True
            out["stream_options"] = {"include_usage": True}
        return False, out
    messages: list[dict[str, Any]] = []
    if body.get("system"):
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
        optional(body.get("dimensions"), int, "dimensions", "must be an integer")
        if is_integer(body.get("dimensions")):
            out["dimensions"] = body["dimensions"]
        return out
    raise BadRequest("input: a string or a non-empty list of strings")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def tool_calls(calls: Any) -> list[dict[str, Any]]:
    """OpenAI's tool calls (a whole answer's, or a stream's joined) as Ollama's, arguments as
    objects."""
    out = []
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            name, arguments = text(function.get("name")), tool_arguments(function.get("arguments"))
            out.append({"function": {"name": name, "arguments": arguments}})
    return out


def stats(usage: Any, began: float, timings: Any) -> dict[str, Any]:
    """Ollama's counts and durations (nanoseconds); the engine's own timings where it gives
    them (llama-server does), else the time since the request arrived."""
    usage = usage if isinstance(usage, dict) else {}
    timings = timings if isinstance(timings, dict) else {}
    total_ns = int((time.perf_counter() - began) * 1e9)
    prompt_ns = nanoseconds(timings.get("prompt_ms"))
    predicted_ns = nanoseconds(timings.get("predicted_ms"))
    return {
        "total_duration": total_ns,
        "load_duration": 0,
        "prompt_eval_count": count(usage.get("prompt_tokens")),
        "prompt_eval_duration": 0 if prompt_ns is None else prompt_ns,
        "eval_count": count(usage.get("completion_tokens")),
        "eval_duration": total_ns if predicted_ns is None else predicted_ns,
    }


def done_reason(finish: Any) -> str:
    """Ollama's done_reason for OpenAI's finish_reason (Ollama ends tool calls with `stop`)."""
    return DONE_REASONS.get(finish, "stop") if isinstance(finish, str) else "stop"


def first_choice(answer: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A whole answer's first choice and its message (empty where the engine sent none)."""
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    choice = choice if isinstance(choice, dict) else {}
    message = choice.get("message")
    return choice, message if isinstance(message, dict) else {}


def chat_response(answer: dict[str, Any], model: str, began: float) -> dict[str, Any]:
    choice, message = first_choice(answer)
    out_message: dict[str, Any] = {"role": "assistant", "content": text(message.get("content"))}
    if thinking := reasoning_of(message):
        out_message["thinking"] = thinking
    if calls := tool_calls(message.get("tool_calls")):
        out_message["tool_calls"] = calls
    return {"model": model, "created_at": now_iso(), "message": out_message, "done": True,
            "done_reason": done_reason(choice.get("finish_reason")),
            **stats(answer.get("usage"), began, answer.get("timings"))}  # fmt: skip


def generate_response(
    answer: dict[str, Any], model: str, began: float, is_chat: bool
) -> dict[str, Any]:
    choice, message = first_choice(answer)
    out: dict[str, Any] = {"model": model, "created_at": now_iso(),
                           "response": text(message.get("content") if is_chat
                                            else choice.get("text"))}  # fmt: skip
    if is_chat and (thinking := reasoning_of(message)):
        out["thinking"] = thinking
    return {**out, "done": True, "done_reason": done_reason(choice.get("finish_reason")),
            **stats(answer.get("usage"), began, answer.get("timings"))}  # fmt: skip


def embed_response(
    answer: dict[str, Any], model: str, began: float, old: bool
) -> dict[str, Any] | None:
    """Ollama's embeddings answer from OpenAI's, or None where `data` is unusable: not a list
    of objects that each hold a list `embedding` (dropping one would pair the vectors with the
    wrong inputs). An `index` that is not an integer reads as absent (the item's place)."""
    data = answer.get("data")
    if not isinstance(data, list) or not all(
        isinstance(item, dict) and isinstance(item.get("embedding"), list) for item in data
    ):
        return None
    places = [(item["index"] if is_integer(item.get("index")) else i, i)
              for i, item in enumerate(data)]  # fmt: skip
    vectors = [data[i]["embedding"] for _, i in sorted(places)]
    if old:  # /api/embeddings: one vector
        return {"embedding": vectors[0] if vectors else []}
    usage = answer.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    total = int((time.perf_counter() - began) * 1e9)
    return {"model": model, "embeddings": vectors, "total_duration": total, "load_duration": 0,
            "prompt_eval_count": count(usage.get("prompt_tokens"))}  # fmt: skip


def error_line(message: str) -> bytes:
    return orjson.dumps({"error": message}) + b"\n"
