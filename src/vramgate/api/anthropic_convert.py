"""Anthropic's Messages API to and from OpenAI's chat completions, for engines that do not serve
`/v1/messages` themselves: pure functions for the request (checked at every depth: a field of
the wrong type is a 400 naming its path) and the answer; the stream is anthropic_stream.py's.
No I/O.

Dropped on the way in, never a crash (an engine cannot act on them): `metadata`, `thinking`,
`context_management`, `service_tier`, `container`, `mcp_servers`, `cache_control` on blocks and
tools, server tools (web search, code execution: a `type` other than "custom"), thinking blocks
of earlier turns, and any block or field a newer client sends that this module does not know.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from vramgate.api.checks import (
    count,
    is_integer,
    is_number,
    optional,
    reasoning_of,
    require,
    strings,
    tool_arguments,
)
from vramgate.errors import BadRequest

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
    """What Anthropic itself refuses with 400, before anything is started: every field the
    translation reads, at any depth."""
    max_tokens = body.get("max_tokens")
    if not is_integer(max_tokens):
        raise BadRequest("max_tokens: Field required (a positive integer)")
    require(max_tokens >= 1, "max_tokens", f"must be at least 1, got {max_tokens}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: Field required (a non-empty list of messages)")
    for i, message in enumerate(messages):
        require(isinstance(message, dict) and message.get("role") in ROLES, f"messages.{i}",
                "each message needs role 'user', 'assistant' or 'system'")  # fmt: skip
        content = message.get("content")
        path = f"messages.{i}.content"
        require(isinstance(content, str | list), path, "a string or a list of content blocks")
        if isinstance(content, list):
            _check_blocks(content, path)
    system = body.get("system")
    optional(system, str | list, "system", "a string or a list of text blocks")
    if isinstance(system, list):
        _check_blocks(system, "system")
    if body.get("stop_sequences") is not None:
        strings(body["stop_sequences"], "stop_sequences")
    tools = body.get("tools")
    optional(tools, list, "tools", "must be a list")
    for i, tool in enumerate(tools or ()):
        _check_tool(tool, f"tools.{i}")
    choice = body.get("tool_choice")
    optional(choice, dict, "tool_choice", "an object with a `type`")
    if isinstance(choice, dict):
        optional(choice.get("type"), str, "tool_choice.type", "must be a string")
        optional(choice.get("name"), str, "tool_choice.name", "must be a string")
    for key in ("temperature", "top_p", "top_k"):
        value = body.get(key)
        require(value is None or is_number(value), key, "must be a number")
    fold_system_messages(body)


def _check_blocks(blocks: list[Any], path: str) -> None:
    """Content blocks: those the translation reads are checked; others (thinking, server
    tools' results, newer kinds) need only be objects with a `type`: they are dropped."""
    for j, block in enumerate(blocks):
        where = f"{path}.{j}"
        require(isinstance(block, dict) and isinstance(block.get("type"), str), where,
                "a content block (an object with a string `type`)")  # fmt: skip
        kind = block["type"]
        if kind == "text":
            require(isinstance(block.get("text"), str), f"{where}.text", "must be a string")
        elif kind == "image":
            _check_source(block.get("source"), f"{where}.source")
        elif kind == "tool_use":
            require(isinstance(block.get("name"), str), f"{where}.name", "must be a string")
            optional(block.get("id"), str, f"{where}.id", "must be a string")
            optional(block.get("input"), dict, f"{where}.input", "must be an object")
        elif kind == "tool_result":
            optional(block.get("tool_use_id"), str, f"{where}.tool_use_id", "must be a string")
            inner = block.get("content")
            optional(inner, str | list, f"{where}.content", "a string or a list of blocks")
            if isinstance(inner, list):
                _check_blocks(inner, f"{where}.content")
        elif kind == "document" and isinstance(block.get("source"), dict):
            source = block["source"]
            if source.get("type") == "text":
                require(isinstance(source.get("data"), str), f"{where}.source.data",
                        "must be a string")  # fmt: skip


def _check_source(source: Any, path: str) -> None:
    if not isinstance(source, dict) or source.get("type") not in ("base64", "url"):
        raise BadRequest(f"{path}: an image needs a source of type base64 or url")
    if source["type"] == "base64":
        require(isinstance(source.get("data"), str), f"{path}.data", "must be a string")
        optional(source.get("media_type"), str, f"{path}.media_type", "must be a string")
    else:
        require(isinstance(source.get("url"), str), f"{path}.url", "must be a string")


def _check_tool(tool: Any, path: str) -> None:
    require(isinstance(tool, dict), path, "a tool (an object)")
    if tool.get("type", "custom") != "custom":
        return  # a server tool (web search...): dropped
    require(isinstance(tool.get("name"), str), f"{path}.name", "must be a string")
    optional(tool.get("description"), str, f"{path}.description", "must be a string")
    optional(tool.get("input_schema"), dict, f"{path}.input_schema", "must be an object")


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
    """A checked image block's source (check_messages_request) as a URL."""
    source = block["source"]
    if source["type"] == "base64":
        return f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}"
    return source["url"]


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


def _is_custom_tool(tool: dict[str, Any]) -> bool:
    return tool.get("type", "custom") == "custom"


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
    """A chat completion as an Anthropic message, named `model` as the client asked: the
    reasoning (`reasoning_content`, or vLLM's newer `reasoning`) as a thinking block first."""
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    choice = choice if isinstance(choice, dict) else {}
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    content: list[dict[str, Any]] = []
    thinking = reasoning_of(message)
    if thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        ident, name = call.get("id"), function.get("name")
        content.append({"type": "tool_use",
                        "id": ident if isinstance(ident, str) and ident else tool_id(),
                        "name": name if isinstance(name, str) else "",
                        "input": tool_arguments(function.get("arguments"))})  # fmt: skip
    has_calls = any(block["type"] == "tool_use" for block in content)
    reason, sequence = stop_reason(choice, stops, has_calls=has_calls)
    usage = answer.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": {
            "input_tokens": count(usage.get("prompt_tokens")),
            "output_tokens": count(usage.get("completion_tokens")),
        },
    }


def stop_reason(
    choice: dict[str, Any], stops: list[str], *, has_calls: bool = False
) -> tuple[str, str | None]:
    """Anthropic's stop_reason (and stop_sequence) for an OpenAI choice. Engines that say which
    stop string ended it (vLLM's `stop_reason`, llama.cpp's `stopping_word`) let it be told
    from an end of turn. An answer that called tools ends in `tool_use` whatever the engine
    said (some say `stop`): agents run the calls only then."""
    finish = choice.get("finish_reason") or "stop"
    matched = choice.get("stop_reason") or choice.get("stopping_word")
    if finish == "stop" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    reason = STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
    return ("tool_use" if has_calls and reason == "end_turn" else reason), None


def tool_id() -> str:
    return "toolu_" + uuid.uuid4().hex[:24]


def count_from_usage(answer: dict[str, Any]) -> dict[str, int]:
    """count_tokens' answer from a one-token chat completion's usage (engines that have no
    count route of their own count with their own tokenizer that way)."""
    usage = answer.get("usage")
    return {"input_tokens": count(usage.get("prompt_tokens") if isinstance(usage, dict) else 0)}
