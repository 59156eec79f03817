"""What the fake engine answers besides tokens: tool calls (deterministic, so a round trip is
testable), prompt token counts, and Anthropic's Messages API served natively (`--no-messages`
refuses it, as engines that lack it do, so that the gateway's translation shows).

With `tools` in a request, the fake calls the first tool with {"city": "Paris"} unless the last
message is the tool's result; then it answers "the tool said: RESULT". A prompt's tokens are its
words. `--parallel-calls N` makes it N calls at once (cities Paris, Oslo, Lima, ...), whose
stream deltas interleave (0, 1, 0, 1), as some engines send parallel calls; `--reasoning TEXT`
makes it a reasoning model that thinks TEXT first (`reasoning_content`, word by word streamed).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

CALL_ARGUMENTS = {"city": "Paris"}
CONTEXT_ERROR = "the request exceeds the available context size, try increasing it"
CITIES = ("Paris", "Oslo", "Lima", "Pune")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-messages", action="store_true", help="No /v1/messages (as engines that lack it)."
    )
    p.add_argument("--no-tools", action="store_true", help="Never call a tool, answer in words.")
    p.add_argument(
        "--messages-error",
        choices=["json", "text"],
        help="/v1/messages fails as llama-server's does: json, a 400 in its own shape "
        '({"error": {"code": 400, ...}}); text, a text/plain 500.',
    )
    p.add_argument(
        "--parallel-calls", type=int, default=1, help="Tool calls per answer (deltas interleaved)."
    )
    p.add_argument("--reasoning", default=None, help="Think this first (reasoning_content).")


def prompt_tokens(body: dict[str, Any]) -> int:
    """The words of every text the request holds (prompt, messages, system, tool results)."""
    return len(
        _texts(body.get("prompt")) + _texts(body.get("messages")) + _texts(body.get("system"))
    )


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [w for item in value for w in _texts(item)]
    if isinstance(value, dict):
        return [w for key in ("content", "text") for w in _texts(value.get(key))]
    return []


def tool_to_call(body: dict[str, Any]) -> str | None:
    """The tool this request should call, if any (OpenAI's or Anthropic's shape)."""
    tools = body.get("tools") or []
    if not tools or body.get("tool_choice") == "none":
        return None
    last = (body.get("messages") or [{}])[-1]
    if last.get("role") == "tool":
        return None
    content = last.get("content")
    if isinstance(content, list) and any(b.get("type") == "tool_result" for b in content):
        return None
    first = tools[0]
    return (first.get("function") or {}).get("name") or first.get("name")


def tool_result(body: dict[str, Any]) -> str | None:
    """What the tool said, when the last message is its result."""
    last = (body.get("messages") or [{}])[-1]
    if last.get("role") == "tool":
        return str(last.get("content"))
    content = last.get("content")
    if isinstance(content, list):
        for block in content:
            if block.get("type") == "tool_result":
                inner = block.get("content")
                return inner if isinstance(inner, str) else " ".join(_texts(inner))
    return None


def call_arguments(i: int) -> dict[str, Any]:
    """The i-th parallel call's arguments (the first is CALL_ARGUMENTS)."""
    return {"city": CITIES[i % len(CITIES)]}


def openai_calls(name: str, n: int = 1) -> list[dict[str, Any]]:
    return [
        {"id": f"call_fake_{i + 1}", "type": "function",
         "function": {"name": name, "arguments": orjson.dumps(call_arguments(i)).decode()}}
        for i in range(n)
    ]  # fmt: skip


def openai_call_deltas(name: str, n: int = 1) -> list[dict[str, Any]]:
    """The calls as a stream sends them: each one's name first, then its arguments in two
    pieces; with n > 1 every call begins, then their pieces alternate (0, 1, 0, 1)."""
    starts, halves = [], []
    for i, call in enumerate(openai_calls(name, n)):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        starts.append({"index": i, "id": call["id"], "type": "function",
                       "function": {"name": name, "arguments": ""}})  # fmt: skip
        halves.append([arguments[:half], arguments[half:]])
    pieces = [
        {"index": i, "function": {"arguments": halves[i][part]}}
        for part in (0, 1)
        for i in range(n)
    ]
    return [{"tool_calls": [delta]} for delta in [*starts, *pieces]]


def reasoning_deltas(text: str) -> list[dict[str, Any]]:
    """A reasoning model's thinking as a stream sends it, word by word."""
    return [{"reasoning_content": piece} for piece in _words(text)]


def _words(text: str) -> list[str]:
    """`text` in pieces that join back to it (each word with the space after it)."""
    out, start = [], 0
    for i, char in enumerate(text):
        if char == " ":
            out.append(text[start : i + 1])
            start = i + 1
    return [*out, text[start:]] if start < len(text) else out


# -- Anthropic's Messages API, served natively -------------------------------------------------


def add_routes(app: web.Application, opts: argparse.Namespace, generate: Any, read: Any) -> None:
    """`generate(request, n)`: the engine's token generator; `read(request)`: a request's body,
    counted in the engine's stats (both fake_engine's)."""
    if opts.no_messages:
        return

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await read(request)
        if opts.messages_error == "json":
            error = {"code": 400, "message": CONTEXT_ERROR, "type": "exceed_context_size_error"}
            return web.json_response({"error": error}, status=400)
        if opts.messages_error == "text":
            return web.Response(status=500, text=f"Internal Server Error: {CONTEXT_ERROR}")
        return await _messages(request, body, generate)

    async def count(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        return web.json_response({"input_tokens": prompt_tokens(body)})

    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count)


async def _messages(
    request: web.Request, body: dict[str, Any], generate: Any
) -> web.StreamResponse:
    n = int(body.get("max_tokens") or 16)
    tool = tool_to_call(body)
    said = tool_result(body)
    usage = {"input_tokens": prompt_tokens(body), "output_tokens": n}
    ident = f"msg_fake_{time.monotonic_ns()}"
    if not body.get("stream"):
        if tool:
            content: list[dict[str, Any]] = [
                {"type": "tool_use", "id": "toolu_fake_1", "name": tool, "input": CALL_ARGUMENTS}
            ]
            reason = "tool_use"
        else:
            text = (
                f"the tool said: {said}"
                if said
                else "".join([t async for t in generate(request, n)])
            )
            content, reason = [{"type": "text", "text": text}], "max_tokens"
        return web.json_response(
            {"id": ident, "type": "message", "role": "assistant", "model": body.get("model"),
             "content": content, "stop_reason": reason, "stop_sequence": None, "usage": usage},
            dumps=lambda o: orjson.dumps(o).decode(),
        )  # fmt: skip
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    async def event(kind: str, data: dict[str, Any]) -> None:
        await resp.write(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")

    start = {"id": ident, "type": "message", "role": "assistant", "model": body.get("model"),
             "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 0}}  # fmt: skip
    await event("message_start", {"type": "message_start", "message": start})
    await event("ping", {"type": "ping"})
    arguments = orjson.dumps(CALL_ARGUMENTS).decode()
    half = len(arguments) // 2

    async def deltas() -> AsyncIterator[
        dict[str, Any]
    ]:  # as they come: the stream's pieces are sent as generated
        if tool:
            for piece in (arguments[:half], arguments[half:]):
                yield {"type": "input_json_delta", "partial_json": piece}
        else:
            async for token in generate(request, n):
                yield {"type": "text_delta", "text": token}

    block: dict[str, Any] = {"type": "text", "text": ""}
    if tool:
        block = {"type": "tool_use", "id": "toolu_fake_1", "name": tool, "input": {}}
    reason = "tool_use" if tool else "max_tokens"
    await event("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": block})  # fmt: skip
    async for delta in deltas():
        await event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": delta})  # fmt: skip
    await event("content_block_stop", {"type": "content_block_stop", "index": 0})
    await event("message_delta", {"type": "message_delta",
                                  "delta": {"stop_reason": reason, "stop_sequence": None},
                                  "usage": {"output_tokens": n}})  # fmt: skip
    await event("message_stop", {"type": "message_stop"})
    await resp.write_eof()
    return resp
