"""Anthropic's Messages API to and from OpenAI's chat completions, for engines that do not serve
`/v1/messages` themselves: pure functions for the request and the answer, and the stream as a
state machine fed OpenAI's SSE bytes, split anywhere, that emits Anthropic's events. No I/O.

Dropped on the way in, never a crash (an engine cannot act on them): `metadata`, `thinking`,
`context_management`, `service_tier`, `container`, `mcp_servers`, `cache_control` on blocks and
tools, server tools (web search, code execution: a `type` other than "custom"), thinking blocks
of earlier turns, and any block or field a newer client sends that this module does not know.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from vramgate.errors import BadRequest
from vramgate.sse import SseSplitter, data_lines

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}  # fmt: skip


def message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


# -- the request -------------------------------------------------------------------------------


def to_chat_request(
    body: dict[str, Any], upstream: str, *, context: int | None = None, vision: bool = True
) -> dict[str, Any]:
    """An Anthropic Messages request as a chat completions request for `upstream`. `context`:
    the model's context length, if known (a `max_tokens` at or above it is dropped: the engine
    then writes until the context is full, instead of refusing); `vision`: whether the model
    takes images (else an image is a 400)."""
    check_messages_request(body)
    chat: dict[str, Any] = {"model": upstream, "messages": _messages(body, vision)}
    max_tokens = body["max_tokens"]
    if context is None or max_tokens < context:
        chat["max_tokens"] = max_tokens
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if body.get(ours) is not None:
            chat[theirs] = body[ours]
    if body.get("stop_sequences"):
        chat["stop"] = list(body["stop_sequences"])
    tools = [_tool(t) for t in body.get("tools") or () if _is_custom_tool(t)]
    if tools:
        chat["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            chat.update(_tool_choice(choice))
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


ROLES = ("user", "assistant", "system")


def check_messages_request(body: dict[str, Any]) -> None:
    """What Anthropic itself refuses with 400, before anything is started."""
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise BadRequest("max_tokens: Field required (a positive integer)")
    if max_tokens < 1:
        raise BadRequest(f"max_tokens: must be at least 1, got {max_tokens}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: Field required (a non-empty list of messages)")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise BadRequest(
                f"messages.{i}: each message needs role 'user', 'assistant' or 'system'"
            )
        if not isinstance(message.get("content"), str | list):
            raise BadRequest(f"messages.{i}.content: a string or a list of content blocks")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise BadRequest("system: a string or a list of text blocks")
    for key in ("stop_sequences", "tools"):
        if body.get(key) is not None and not isinstance(body[key], list):
            raise BadRequest(f"{key}: must be a list")
    for key in ("temperature", "top_p", "top_k"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise BadRequest(f"{key}: must be a number")
    fold_system_messages(body)


def fold_system_messages(body: dict[str, Any]) -> None:
    """`role: system` messages among the turns (Claude Code 2.1 puts its agent list there) go
    to the end of the top-level `system`, in order: local models' chat templates take a system
    prompt first, and some raise on one anywhere else."""
    messages = body["messages"]
    if all(m["role"] != "system" for m in messages):
        return  # the usual case: nothing to copy
    extra = [_text_of(m["content"]) for m in messages if m["role"] == "system"]
    body["messages"] = [m for m in messages if m["role"] != "system"]
    if not body["messages"]:
        raise BadRequest("messages: at least one 'user' or 'assistant' message is required")
    system = body.get("system")
    if isinstance(system, list):
        body["system"] = [*system, *({"type": "text", "text": t} for t in extra)]
    else:
        body["system"] = "\n\n".join([system, *extra] if system else extra)


def _messages(body: dict[str, Any], vision: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = _text_of(body.get("system"))
    if system:
        out.append({"role": "system", "content": system})
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
        elif message["role"] == "assistant":
            out.append(_assistant(content))
        else:
            out.extend(_user(content, vision))
    return out


def _assistant(blocks: list[Any]) -> dict[str, Any]:
    text = "".join(b.get("text", "") for b in _blocks(blocks, "text"))
    calls = [
        {
            "id": str(b.get("id") or f"call_{i}"),
            "type": "function",
            "function": {"name": str(b.get("name", "")), "arguments": _json(b.get("input", {}))},
        }
        for i, b in enumerate(_blocks(blocks, "tool_use"))
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    elif not text:
        message["content"] = ""
    return message


def _user(blocks: list[Any], vision: bool) -> list[dict[str, Any]]:
    """Tool results first (each its own `tool` message, right after the assistant's calls, as
    OpenAI wants them), then what the user wrote, text and images in their order."""
    out: list[dict[str, Any]] = []
    for result in _blocks(blocks, "tool_result"):
        text = _text_of(result.get("content"))
        if result.get("is_error"):
            text = f"Error: {text}"
        out.append({"role": "tool", "tool_call_id": str(result.get("tool_use_id", "")),
                    "content": text})  # fmt: skip
    parts: list[dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            if not vision:
                raise BadRequest("this model does not take images (its `vision` is off)")
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
        elif kind == "document" and isinstance(block.get("source"), dict):
            source = block["source"]
            if source.get("type") == "text":
                parts.append({"type": "text", "text": str(source.get("data", ""))})
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        content: Any = "".join(p["text"] for p in parts) if only_text else parts
        out.append({"role": "user", "content": content})
    return out


def _image_url(block: dict[str, Any]) -> str:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    if isinstance(source, dict) and source.get("type") == "url":
        return str(source.get("url", ""))
    raise BadRequest("an image block needs a source of type base64 or url")


def _blocks(blocks: list[Any], kind: str) -> list[dict[str, Any]]:
    return [b for b in blocks if isinstance(b, dict) and b.get("type") == kind]


def _text_of(content: Any) -> str:
    """A system prompt or tool result: a string, or text blocks joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in _blocks(content, "text"))
    return str(content)


def _is_custom_tool(tool: Any) -> bool:
    return isinstance(tool, dict) and tool.get("type", "custom") == "custom" and "name" in tool


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": str(tool["name"])}
    if tool.get("description"):
        function["description"] = str(tool["description"])
    schema = tool.get("input_schema")
    function["parameters"] = schema if isinstance(schema, dict) else {"type": "object"}
    return {"type": "function", "function": function}


def _tool_choice(choice: dict[str, Any]) -> dict[str, Any]:
    kind = choice.get("type")
    out: dict[str, Any] = {}
    if kind == "any":
        out["tool_choice"] = "required"
    elif kind == "tool" and choice.get("name"):
        out["tool_choice"] = {"type": "function", "function": {"name": str(choice["name"])}}
    elif kind in ("auto", "none"):
        out["tool_choice"] = kind
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


# -- the answer --------------------------------------------------------------------------------


def from_chat_response(answer: dict[str, Any], model: str, stops: list[str]) -> dict[str, Any]:
    """A chat completion as an Anthropic message, named `model` as the client asked."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or _tool_id(),
                        "name": function.get("name", ""),
                        "input": _arguments(function.get("arguments"))})  # fmt: skip
    reason, sequence = stop_reason(choice, stops)
    usage = answer.get("usage") or {}
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": {
            "input_tokens": int(usage.get("prompt_tokens") or 0),
            "output_tokens": int(usage.get("completion_tokens") or 0),
        },
    }


def stop_reason(choice: dict[str, Any], stops: list[str]) -> tuple[str, str | None]:
    """Anthropic's stop_reason (and stop_sequence) for an OpenAI choice. Engines that say which
    stop string ended it (vLLM's `stop_reason`, llama.cpp's `stopping_word`) let it be told
    from an end of turn."""
    finish = choice.get("finish_reason") or "stop"
    matched = choice.get("stop_reason") or choice.get("stopping_word")
    if finish == "stop" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return STOP_REASONS.get(finish, "end_turn"), None


def _arguments(arguments: Any) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": arguments}  # what the model wrote is not JSON: kept, not lost
    return parsed if isinstance(parsed, dict) else {"_value": parsed}


def _tool_id() -> str:
    return "toolu_" + uuid.uuid4().hex[:24]


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


PING = sse("ping", {"type": "ping"})


def error_event(kind: str, message: str) -> bytes:
    return sse("error", {"type": "error", "error": {"type": kind, "message": message}})


# -- the stream --------------------------------------------------------------------------------


class MessageStream:
    """OpenAI chat completion chunks in, Anthropic stream events out.

    message_start once; each run of text, and each tool call, a content block of its own
    (content_block_start, deltas, content_block_stop); then message_delta with the stop reason
    and usage, and message_stop. An error the gateway put in the stream becomes an `error`
    event. `feed` takes bytes as they come, split anywhere; `end` closes what is open.
    """

    def __init__(self, model: str, stops: list[str]) -> None:
        self.model, self.stops = model, stops
        self.events = SseSplitter()
        self.started = self.finished = False
        self.block: str | None = None  # the open block's kind: text, tool_use
        self.index = -1
        self.tools: dict[int, int] = {}  # OpenAI tool call index -> our block index
        self.finish: dict[str, Any] = {}
        self.usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0}

    def start(self) -> bytes:
        """message_start, if not sent yet (also sent before pings, while the engine starts)."""
        if self.started:
            return b""
        self.started = True
        message = {"id": message_id(), "type": "message", "role": "assistant", "content": [],
                   "model": self.model, "stop_reason": None, "stop_sequence": None,
                   "usage": dict(self.usage)}  # fmt: skip
        return sse("message_start", {"type": "message_start", "message": message})

    def feed(self, data: bytes) -> bytes:
        events, _ = self.events.feed(data)
        return b"".join(self._event(e) for e in events)

    def end(self) -> bytes:
        out = self._event(rest) if (rest := self.events.rest()) else b""
        return out + self._finish()

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
        out = self.start()
        if isinstance(chunk.get("error"), dict):  # the gateway's own, or the engine's
            message = str(chunk["error"].get("message", "the engine failed"))
            self.finished = True
            return out + self._close() + error_event("api_error", message)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = {"input_tokens": int(usage.get("prompt_tokens") or 0),
                          "output_tokens": int(usage.get("completion_tokens") or 0)}  # fmt: skip
        for choice in chunk.get("choices") or ():
            out += self._delta(choice.get("delta") or {})
            if choice.get("finish_reason"):
                self.finish = choice
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        out = b""
        text = delta.get("content")
        if text:
            if self.block != "text":
                out += self._open({"type": "text", "text": ""}, "text")
            out += self._delta_event({"type": "text_delta", "text": text})
        for call in delta.get("tool_calls") or ():
            position = call.get("index", 0)
            function = call.get("function") or {}
            if position not in self.tools:
                block = {"type": "tool_use", "id": call.get("id") or _tool_id(),
                         "name": function.get("name", ""), "input": {}}  # fmt: skip
                out += self._open(block, "tool_use")
                self.tools[position] = self.index
            if function.get("arguments") and self.tools[position] == self.index:
                partial = {"type": "input_json_delta", "partial_json": function["arguments"]}
                out += self._delta_event(partial)
        return out

    def _open(self, block: dict[str, Any], kind: str) -> bytes:
        out = self._close()
        self.index += 1
        self.block = kind
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        return out + sse("content_block_start", start)

    def _delta_event(self, delta: dict[str, Any]) -> bytes:
        event = {"type": "content_block_delta", "index": self.index, "delta": delta}
        return sse("content_block_delta", event)

    def _close(self) -> bytes:
        if self.block is None:
            return b""
        self.block = None
        return sse("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _finish(self) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        out = self.start() + self._close()
        reason, sequence = stop_reason(self.finish, self.stops)
        delta = {"type": "message_delta",
                 "delta": {"stop_reason": reason, "stop_sequence": sequence},
                 "usage": self.usage}  # fmt: skip
        return out + sse("message_delta", delta) + sse("message_stop", {"type": "message_stop"})


def count_from_usage(answer: dict[str, Any]) -> dict[str, int]:
    """count_tokens' answer from a one-token chat completion's usage (engines that have no
    count route of their own count with their own tokenizer that way)."""
    return {"input_tokens": int((answer.get("usage") or {}).get("prompt_tokens") or 0)}
