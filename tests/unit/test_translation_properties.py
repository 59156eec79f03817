"""Property tests of the translations (Hypothesis): any request drawn from a client API's schema
and mistyped at any depth is either a request OpenAI's types accept or our 400, never another
exception; any engine stream drawn from OpenAI's chunk grammar, split anywhere, comes out as
objects the client SDK's own types accept, carrying the text, reasoning and tool arguments that
went in. Examples per property: translation_grammar.SETTINGS."""

from __future__ import annotations

import time
from typing import Any

import ollama
import orjson
import pytest
from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion
from pydantic import TypeAdapter

from tests.unit.translation_grammar import (
    ANTHROPIC_REQUEST,
    OLLAMA_CHAT,
    OLLAMA_EMBED,
    OLLAMA_GENERATE,
    SETTINGS,
    Script,
    check_openai_request,
    engine_stream,
    mistypings,
    split,
)
from vramgate.api import anthropic_convert, ollama_convert
from vramgate.api.anthropic_stream import MessageStream
from vramgate.api.ollama_stream import NdjsonStream
from vramgate.errors import BadRequest

EVENT = TypeAdapter(RawMessageStreamEvent)

# -- requests ------------------------------------------------------------------------------------


def translated_or_400(data: Any, request: dict[str, Any], convert: Any, kind: str = "chat") -> None:
    """`request`, and each of its mistypings, translated: a request OpenAI's types accept, or
    our 400."""
    for body in mistypings(data, request):
        if not isinstance(body, dict):
            continue  # the route refuses a body that is not an object before translating
        try:
            out = convert(body)
        except BadRequest:
            continue
        if isinstance(out, tuple):  # generate: (is_chat, request)
            is_chat, out = out
            kind = "chat" if is_chat else "completions"
        check_openai_request(out, kind)


@SETTINGS
@given(st.data(), st.booleans(), st.booleans())
def test_any_messages_request_is_a_chat_request_or_a_400(data, vision, counted):
    """/v1/messages and /v1/messages/count_tokens (which translates with max_tokens 1)."""

    def convert(body: dict[str, Any]) -> dict[str, Any]:
        if counted:
            body = {**body, "max_tokens": 1, "stream": False}
        return anthropic_convert.to_chat_request(body, "m", vision=vision)

    translated_or_400(data, data.draw(ANTHROPIC_REQUEST), convert)


@SETTINGS
@given(st.data(), st.booleans())
def test_any_ollama_chat_request_is_a_chat_request_or_a_400(data, vision):
    translated_or_400(
        data, data.draw(OLLAMA_CHAT), lambda b: ollama_convert.chat_request(b, "m", vision)
    )


@SETTINGS
@given(st.data(), st.booleans())
def test_any_ollama_generate_request_is_a_request_or_a_400(data, vision):
    translate = lambda b: ollama_convert.generate_request(b, "m", vision)  # noqa: E731
    translated_or_400(data, data.draw(OLLAMA_GENERATE), translate)


@SETTINGS
@given(st.data())
def test_any_ollama_embed_request_is_an_embeddings_request_or_a_400(data):
    translate = lambda b: ollama_convert.embed_request(b, "m")  # noqa: E731
    translated_or_400(data, data.draw(OLLAMA_EMBED), translate, "embeddings")


# -- streams: Anthropic --------------------------------------------------------------------------


def anthropic_events(raw: bytes) -> list[dict[str, Any]]:
    """The stream's events, each checked against the SDK's types (pings skipped)."""
    out = []
    for block in raw.split(b"\n\n"):
        if not block:
            continue
        name, data = block.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: ")
        event = orjson.loads(data[6:])
        assert event["type"] == name[7:].decode()
        if event["type"] == "error":
            ErrorResponse.model_validate(event)
        elif event["type"] != "ping":
            EVENT.validate_python(event)
        out.append(event)
    return out


def anthropic_message(events: list[dict[str, Any]], *, whole: bool = True) -> dict[str, Any]:
    """The message a client builds from the events, which must come in Anthropic's order: one
    block open at a time, each delta of its block's kind. `whole`: the stream ended well (else
    a tool call's arguments may have been cut off)."""
    assert events[0]["type"] == "message_start"
    message = dict(events[0]["message"])
    content: list[dict[str, Any]] = []
    partial: list[str] = []
    open_block: dict[str, Any] | None = None
    kinds = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "thinking",
             "input_json_delta": "tool_use"}  # fmt: skip
    for event in events[1:]:
        kind = event["type"]
        if kind != "message_stop":
            assert message.get("stop_reason") is None, "only message_stop after message_delta"
        if kind == "content_block_start":
            assert open_block is None and event["index"] == len(content)
            open_block = dict(event["content_block"])
            content.append(open_block)
            partial.append("")
        elif kind == "content_block_delta":
            assert open_block is not None and event["index"] == len(content) - 1
            delta = event["delta"]
            assert kinds[delta["type"]] == open_block["type"]
            if delta["type"] == "input_json_delta":
                partial[-1] += delta["partial_json"]
            else:
                field = delta["type"].removesuffix("_delta")
                open_block[field] += delta[field]
        elif kind == "content_block_stop":
            assert open_block is not None and event["index"] == len(content) - 1
            open_block = None
        elif kind == "message_delta":
            assert open_block is None
            message.update(event["delta"])
            message["usage"] = {**message["usage"], **event["usage"]}
        elif kind == "message_stop":
            assert message.get("stop_reason") is not None
            message["stop_reason_seen"] = True
    for block, json in zip(content, partial, strict=True):
        if block["type"] == "tool_use" and whole:
            block["input"] = orjson.loads(json) if json else {}
    message["content"] = content
    return message


def joined(content: list[dict[str, Any]], kind: str) -> str:
    return "".join(b[kind] for b in content if b["type"] == kind)


STOPS = {None: "end_turn", "stop": "end_turn", "length": "max_tokens",
         "tool_calls": "tool_use", "content_filter": "refusal"}  # fmt: skip


def fed(stream: Any, pieces: list[bytes]) -> bytes:
    return b"".join(stream.feed(piece) for piece in pieces) + stream.end()


@SETTINGS
@given(st.data())
def test_any_engine_stream_is_an_anthropic_stream_carrying_all_of_it(data):
    script: Script = engine_stream(data)
    raw = fed(MessageStream("claude-x", []), split(data, script.raw))
    events = anthropic_events(raw)
    again = anthropic_events(fed(MessageStream("claude-x", []), [script.raw]))
    assert _without_ids(events) == _without_ids(again), "the same however it is split"
    if script.error is not None:
        assert events[-1] == {"type": "error",
                              "error": {"type": "api_error", "message": script.error}}  # fmt: skip
        message = anthropic_message(events[:-1], whole=False)
        assert script.text.startswith(joined(message["content"], "text"))
        assert script.reasoning.startswith(joined(message["content"], "thinking"))
        return
    message = anthropic_message(events)
    assert message.pop("stop_reason_seen")
    Message.model_validate(message)
    content = message["content"]
    assert joined(content, "text") == script.text
    assert joined(content, "thinking") == script.reasoning
    calls = [(b["id"], b["name"], b["input"]) for b in content if b["type"] == "tool_use"]
    assert calls == script.calls
    reason = STOPS[script.finish]
    assert message["stop_reason"] == ("tool_use" if calls and reason == "end_turn" else reason)
    prompt, completion = script.usage or (0, 0)
    assert message["usage"]["input_tokens"] == prompt
    assert message["usage"]["output_tokens"] == completion


def _without_ids(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**e, "message": {**e["message"], "id": ""}} if "message" in e else e for e in events]


# -- streams: Ollama -----------------------------------------------------------------------------


@SETTINGS
@given(st.data(), st.booleans())
def test_any_engine_stream_is_an_ollama_stream_carrying_all_of_it(data, generate):
    script: Script = engine_stream(data)
    stream = NdjsonStream("m", time.perf_counter(), generate=generate)
    raw = fed(stream, split(data, script.raw))
    again = fed(NdjsonStream("m", time.perf_counter(), generate=generate), [script.raw])
    lines = [orjson.loads(line) for line in raw.split(b"\n") if line]
    assert len(lines) == len([line for line in again.split(b"\n") if line])
    sdk = ollama.GenerateResponse if generate else ollama.ChatResponse
    for line in lines:
        if "error" not in line:
            sdk.model_validate(line)
    if generate:
        text = "".join(x.get("response", "") for x in lines)
        thinking = "".join(x.get("thinking") or "" for x in lines)
    else:
        text = "".join(x["message"]["content"] for x in lines if "message" in x)
        thinking = "".join(x["message"].get("thinking") or "" for x in lines if "message" in x)
    if script.error is not None:
        assert lines[-1] == {"error": script.error}
        assert script.text.startswith(text) and script.reasoning.startswith(thinking)
        return
    assert (text, thinking) == (script.text, script.reasoning)
    assert [x["done"] for x in lines] == [False] * (len(lines) - 1) + [True]
    calls = [c for x in lines if "message" in x for c in x["message"].get("tool_calls") or ()]
    if not generate:
        assert calls == [{"function": {"name": name, "arguments": arguments}}
                         for _, name, arguments in script.calls]  # fmt: skip
    reasons = {"length": "length"}
    assert lines[-1]["done_reason"] == reasons.get(script.finish or "", "stop")
    assert lines[-1]["eval_count"] == (script.usage or (0, 0))[1]


@pytest.mark.parametrize("generate", [False, True])
def test_a_stream_fed_one_byte_at_a_time_is_the_same_stream(generate):
    """The SSE parser at its limit: every byte its own piece, a CRLF and UTF-8 cut in two."""
    raw = (
        'data: {"choices":[{"index":0,"delta":{"reasoning_content":"é?"}}]}\r\n\r\n'
        'data:{"choices":[{"index":0,"delta":{"content":"ü"}}]}\n\n'
        'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"a",'
        '"function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}\r\n\r\n'
    ).encode()
    pieces = [raw[i : i + 1] for i in range(len(raw))]
    anthropic = anthropic_message(anthropic_events(fed(MessageStream("m", []), pieces)))
    assert [b["type"] for b in anthropic["content"]] == ["thinking", "text", "tool_use"]
    assert joined(anthropic["content"], "thinking") == "é?"
    lines = fed(NdjsonStream("m", 0.0, generate=generate), pieces).split(b"\n")
    whole = fed(NdjsonStream("m", 0.0, generate=generate), [raw]).split(b"\n")
    assert len(lines) == len(whole) == 5  # thinking, text, the call, done, ""


# -- whole answers -------------------------------------------------------------------------------


@SETTINGS
@given(st.data())
def test_any_whole_answer_is_a_message_each_sdk_accepts_carrying_all_of_it(data):
    """A non-streamed chat completion (the stream grammar's content, whole) as Anthropic's
    message and Ollama's chat and generate answers."""
    script: Script = engine_stream(data, with_error=False)
    message: dict[str, Any] = {"role": "assistant", "content": script.text or None}
    if script.reasoning:
        message[script.reasoning_key] = script.reasoning
    if script.calls:
        message["tool_calls"] = [
            {"id": ident, "type": "function", "function": {"name": name, "arguments": sent}}
            for (ident, name, _), sent in zip(script.calls, script.sent, strict=True)
        ]  # fmt: skip
    choice = {"index": 0, "message": message, "finish_reason": script.finish or "stop"}
    answer: dict[str, Any] = {"id": "c", "object": "chat.completion", "created": 1,
                              "model": "m", "choices": [choice]}  # fmt: skip
    if script.usage:
        answer["usage"] = {"prompt_tokens": script.usage[0], "completion_tokens": script.usage[1],
                           "total_tokens": sum(script.usage)}  # fmt: skip
    ChatCompletion.model_validate(answer)  # the grammar is OpenAI's
    translated = anthropic_convert.from_chat_response(answer, "claude-x", [])
    Message.model_validate(translated)
    content = translated["content"]
    assert (joined(content, "text"), joined(content, "thinking")) == (script.text, script.reasoning)
    calls = [(b["id"], b["name"], b["input"]) for b in content if b["type"] == "tool_use"]
    assert calls == script.calls
    chat = ollama_convert.chat_response(answer, "m", time.perf_counter())
    ollama.ChatResponse.model_validate(chat)
    assert chat["message"]["content"] == script.text
    assert chat["message"].get("thinking", "") == script.reasoning
    assert chat["message"].get("tool_calls", []) == [
        {"function": {"name": name, "arguments": arguments}} for _, name, arguments in script.calls
    ]
    generated = ollama_convert.generate_response(answer, "m", time.perf_counter(), True)
    ollama.GenerateResponse.model_validate(generated)
    assert (generated["response"], generated.get("thinking", "")) == (script.text, script.reasoning)
