"""Anthropic's Messages API to and from chat completions, case by case, both ways; the stream
split at every byte."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from vramgate.api import anthropic_convert as convert
from vramgate.api.anthropic_convert import from_chat_response, to_chat_request
from vramgate.api.anthropic_stream import MessageStream
from vramgate.errors import BadRequest

TOOL = {"name": "weather", "description": "The weather", "input_schema": {"type": "object"}}


def request(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}], **fields}  # fmt: skip


def test_system_as_a_string_or_as_blocks_becomes_the_first_message():
    for system in (
        "Be brief.",
        [{"type": "text", "text": "Be"}, {"type": "text", "text": "brief."}],
    ):
        chat = to_chat_request(request(system=system), "m")
        assert chat["messages"][0]["role"] == "system"
        assert chat["messages"][0]["content"] in ("Be brief.", "Be\nbrief.")
        assert chat["messages"][1] == {"role": "user", "content": "hi"}


def test_sampling_fields_pass_and_unknown_ones_are_dropped():
    chat = to_chat_request(
        request(
            temperature=0.2,
            top_p=0.9,
            top_k=5,
            stop_sequences=["END"],
            metadata={"user_id": "u"},
            thinking={"type": "enabled", "budget_tokens": 10},
            context_management={"edits": []},
            service_tier="auto",
        ),
        "m",
    )
    assert chat == {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 100, "temperature": 0.2, "top_p": 0.9, "top_k": 5,
                    "stop": ["END"]}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (request(max_tokens=0), "at least 1"),
        (request(max_tokens="5"), "max_tokens"),
        (request(messages=[]), "messages"),
        (request(messages=[{"role": "system", "content": "x"}]), "at least one"),
        (request(messages=[{"role": "tool", "content": "x"}]), "role"),
        (request(messages=[{"role": "user", "content": 5}]), "content"),
        (request(temperature="hot"), "temperature"),
        (request(tools={"a": 1}), "tools"),
    ],
)
def test_what_anthropic_refuses_is_a_400(body, says):
    with pytest.raises(BadRequest, match=says):
        to_chat_request(body, "m")


def test_max_tokens_at_or_over_the_context_is_dropped_not_refused():
    assert "max_tokens" not in to_chat_request(request(max_tokens=32000), "m", context=8192)
    assert to_chat_request(request(max_tokens=500), "m", context=8192)["max_tokens"] == 500


def test_tools_and_tool_choice_become_functions_and_server_tools_are_dropped():
    tools = [TOOL, {"type": "web_search_20250305", "name": "web_search"},
             {**TOOL, "name": "other", "cache_control": {"type": "ephemeral"}}]  # fmt: skip
    chat = to_chat_request(
        request(
            tools=tools,
            tool_choice={"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        ),
        "m",
    )
    assert [t["function"]["name"] for t in chat["tools"]] == ["weather", "other"]
    assert chat["tools"][0]["function"]["parameters"] == {"type": "object"}
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert chat["parallel_tool_calls"] is False
    assert (
        to_chat_request(request(tools=[TOOL], tool_choice={"type": "any"}), "m")["tool_choice"]
        == "required"
    )


def test_a_tool_round_trip_in_history_becomes_tool_calls_and_tool_messages():
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1",
             "content": [{"type": "text", "text": "sunny"}]},
            {"type": "text", "text": "and tomorrow?"},
        ]},
    ]  # fmt: skip
    chat = to_chat_request(request(messages=messages, tools=[TOOL]), "m")
    assert chat["messages"][1] == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [{"id": "toolu_1", "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}],
    }  # fmt: skip
    assert chat["messages"][2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}
    assert chat["messages"][3] == {"role": "user", "content": "and tomorrow?"}


def test_images_go_as_data_urls_or_are_a_400_where_the_model_takes_none():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}}  # fmt: skip
    body = request(messages=[{"role": "user", "content": [{"type": "text", "text": "what?"},
                                                          image]}])  # fmt: skip
    parts = to_chat_request(body, "m")["messages"][0]["content"]
    assert parts[1] == {"type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}  # fmt: skip
    with pytest.raises(BadRequest, match="does not take images"):
        to_chat_request(body, "m", vision=False)


def test_streaming_asks_for_usage():
    chat = to_chat_request(request(stream=True), "m")
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


def test_an_answer_with_text_and_a_tool_call_becomes_blocks():
    answer = {
        "choices": [{"finish_reason": "tool_calls", "message": {
            "content": "Looking.",
            "tool_calls": [{"id": "c1", "function": {"name": "weather",
                                                     "arguments": '{"city": "Oslo"}'}}],
        }}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7},
    }  # fmt: skip
    message = from_chat_response(answer, "claude-x", [])
    assert message["model"] == "claude-x" and message["type"] == "message"
    assert message["content"] == [
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "c1", "name": "weather", "input": {"city": "Oslo"}},
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {"input_tokens": 12, "output_tokens": 7}


@pytest.mark.parametrize(
    ("choice", "reason", "sequence"),
    [
        ({"finish_reason": "stop"}, "end_turn", None),
        ({"finish_reason": "length"}, "max_tokens", None),
        ({"finish_reason": "stop", "stop_reason": "END"}, "stop_sequence", "END"),  # vLLM
        ({"finish_reason": "stop", "stopping_word": "END"}, "stop_sequence", "END"),  # llama.cpp
        ({"finish_reason": "stop", "stop_reason": 2}, "end_turn", None),  # an EOS token id
    ],
)
def test_stop_reasons(choice, reason, sequence):
    message = from_chat_response({"choices": [{**choice, "message": {"content": "x"}}]}, "m",
                                 ["END"])  # fmt: skip
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, sequence)


def chunk(**delta: Any) -> bytes:
    finish = delta.pop("finish", None)
    body = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


STREAM = b"".join([
    chunk(role="assistant", content="Hel"),
    chunk(content="lo"),
    chunk(tool_calls=[{"index": 0, "id": "c1", "function": {"name": "weather",
                                                            "arguments": ""}}]),
    chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"city":'}}]),
    chunk(tool_calls=[{"index": 0, "function": {"arguments": '"Oslo"}'}}]),
    chunk(finish="tool_calls"),
    b'data: {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}\n\n',
    b"data: [DONE]\n\n",
])  # fmt: skip


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.split(b"\n\n"):
        if not block:
            continue
        kind, data = block.split(b"\n")
        out.append((kind.removeprefix(b"event: ").decode(), orjson.loads(data[6:])))
    return out


def test_a_stream_becomes_anthropics_event_sequence_however_it_is_split():
    expected = None
    for cut in range(1, len(STREAM)):
        stream = MessageStream("claude-x", [])
        got = events(stream.feed(STREAM[:cut]) + stream.feed(STREAM[cut:]) + stream.end())
        if expected is None:
            expected = got
        assert [(k, {x: y for x, y in d.items() if x != "message"}) for k, d in got] == [
            (k, {x: y for x, y in d.items() if x != "message"}) for k, d in expected
        ]
    assert expected is not None
    kinds = [k for k, _ in expected]
    assert kinds == ["message_start", "content_block_start", "content_block_delta",
                     "content_block_delta", "content_block_stop", "content_block_start",
                     "content_block_delta", "content_block_stop",  # the arguments, checked whole
                     "message_delta", "message_stop"]  # fmt: skip
    assert expected[0][1]["message"]["model"] == "claude-x"
    assert "".join(d["delta"].get("text", "") for k, d in expected if k == "content_block_delta"
                   and d["index"] == 0) == "Hello"  # fmt: skip
    partial = "".join(d["delta"]["partial_json"] for k, d in expected
                      if k == "content_block_delta" and d["index"] == 1)  # fmt: skip
    assert orjson.loads(partial) == {"city": "Oslo"}
    assert expected[5][1]["content_block"] == {"type": "tool_use", "id": "c1",
                                                "name": "weather", "input": {}}  # fmt: skip
    assert expected[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert expected[-2][1]["usage"] == {"input_tokens": 9, "output_tokens": 4}


def test_an_error_in_the_stream_becomes_an_error_event_and_nothing_follows():
    stream = MessageStream("m", [])
    out = stream.feed(chunk(content="a") + b'data: {"error": {"message": "engine died"}}\n\n')
    out += stream.end()
    got = events(out)
    error = {"type": "api_error", "message": "engine died"}
    assert got[-1] == ("error", {"type": "error", "error": error})
    assert "message_stop" not in [k for k, _ in got]


def test_a_stream_that_ends_with_nothing_still_ends_well_formed():
    got = events(MessageStream("m", []).end())
    assert [k for k, _ in got] == ["message_start", "message_delta", "message_stop"]


def test_system_messages_among_the_turns_join_the_system_prompt():
    """Claude Code 2.1 sends `role: system` messages after the user's (its agent list): they go
    to the end of the top-level system, as text blocks where it is blocks, and the translation
    has one system message, first."""
    body = {
        "max_tokens": 10,
        "system": [{"type": "text", "text": "You are an agent."}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "Agents: a, b."},
            {"role": "system", "content": [{"type": "text", "text": "More."}]},
        ],
    }
    convert.check_messages_request(body)
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert [b["text"] for b in body["system"]] == ["You are an agent.", "Agents: a, b.", "More."]
    chat = convert.to_chat_request(body, "m")
    assert [m["role"] for m in chat["messages"]] == ["system", "user"]
    plain = {"max_tokens": 1, "system": "S", "messages": [
        {"role": "user", "content": "q"}, {"role": "system", "content": "T"}]}  # fmt: skip
    convert.check_messages_request(plain)
    assert plain["system"] == "S\n\nT"
    with pytest.raises(BadRequest, match="at least one"):
        convert.check_messages_request({"max_tokens": 1, "messages": [
            {"role": "system", "content": "only"}]})  # fmt: skip
    with pytest.raises(BadRequest, match="role"):
        convert.check_messages_request({"max_tokens": 1, "messages": [
            {"role": "tool", "content": "x"}]})  # fmt: skip


def assembled(raw: bytes) -> list[dict[str, Any]]:
    """The content blocks a client builds from the events (deltas joined by block index)."""
    blocks: dict[int, dict[str, Any]] = {}
    for kind, data in events(raw):
        if kind == "content_block_start":
            blocks[data["index"]] = dict(data["content_block"], partial="")
        elif kind == "content_block_delta":
            block, delta = blocks[data["index"]], data["delta"]
            for key, into in (("text", "text"), ("thinking", "thinking"),
                              ("partial_json", "partial")):  # fmt: skip
                if key in delta:
                    block[into] += delta[key]
    return [blocks[i] for i in sorted(blocks)]


def test_interleaved_parallel_tool_calls_keep_every_argument():
    """Engines may interleave the deltas of parallel calls (index 0, 1, 0, 1): every call's
    arguments arrive whole, each in its own tool_use block."""
    raw = b"".join([
        chunk(tool_calls=[{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]),
        chunk(tool_calls=[{"index": 1, "id": "b", "function": {"name": "g", "arguments": ""}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"x":'}}]),
        chunk(tool_calls=[{"index": 1, "function": {"arguments": '{"y":'}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": " 1}"}}]),
        chunk(tool_calls=[{"index": 1, "function": {"arguments": " 2}"}}]),
        chunk(finish="tool_calls"),
    ])  # fmt: skip
    stream = MessageStream("m", [])
    blocks = assembled(stream.feed(raw) + stream.end())
    assert [(b["id"], b["name"], orjson.loads(b["partial"])) for b in blocks] == [
        ("a", "f", {"x": 1}), ("b", "g", {"y": 2})]  # fmt: skip


def test_reasoning_streams_as_a_thinking_block_before_the_text():
    raw = b"".join([
        chunk(reasoning_content="Let me "),
        chunk(reasoning_content="think."),
        chunk(content="Done."),
        chunk(finish="stop"),
    ])  # fmt: skip
    stream = MessageStream("m", [])
    blocks = assembled(stream.feed(raw) + stream.end())
    assert [(b["type"], b.get("thinking"), b.get("text")) for b in blocks] == [
        ("thinking", "Let me think.", None), ("text", None, "Done.")]  # fmt: skip
    assert blocks[0]["signature"] == ""


def test_a_whole_answer_with_reasoning_has_a_thinking_block_first():
    answer = {"choices": [{"finish_reason": "stop", "message": {
        "content": "4", "reasoning_content": "2+2"}}]}  # fmt: skip
    message = from_chat_response(answer, "m", [])
    assert message["content"] == [
        {"type": "thinking", "thinking": "2+2", "signature": ""},
        {"type": "text", "text": "4"},
    ]


def test_nothing_follows_an_error_event():
    stream = MessageStream("m", [])
    out = stream.feed(b'data: {"error": {"message": "engine died"}}\n\n' + chunk(content="late"))
    got = events(out + stream.end())
    assert [k for k, _ in got] == ["message_start", "error"]


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "text", "text": 5}],
        [{"type": "text", "text": ["a"]}],
        [{"type": "text"}],
        ["just a string"],
        [{"type": "tool_use", "id": "t", "name": 3, "input": {}}],
        [{"type": "tool_use", "id": "t", "name": "f", "input": "x"}],
    ],
)
def test_a_mistyped_block_is_a_400_in_any_turn(content):
    for role in ("user", "assistant"):
        with pytest.raises(BadRequest, match=r"messages\.0\.content\.0"):
            to_chat_request(request(messages=[{"role": role, "content": content}]), "m")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"system": [{"type": "text", "text": 1}]}, r"system\.0\.text"),
        ({"stop_sequences": ["a", 1]}, r"stop_sequences\.1"),
        ({"tools": [{"name": 1}]}, r"tools\.0\.name"),
        ({"tools": ["weather"]}, r"tools\.0"),
        ({"tool_choice": {"type": "tool", "name": 2}}, r"tool_choice\.name"),
        ({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": 5}]}]}, r"content\.0\.content"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "data": 5}}]}]}, r"source\.data"),
    ],
)  # fmt: skip
def test_mistyped_fields_at_depth_are_a_400(fields, says):
    with pytest.raises(BadRequest, match=says):
        to_chat_request(request(**fields), "m")


def _tool_blocks(raw: bytes) -> list[dict[str, Any]]:
    """Each tool_use block as a client builds it: its start, then its arguments parsed."""
    blocks: list[dict[str, Any]] = []
    for kind, data in events(raw):
        if kind == "content_block_start" and data["content_block"]["type"] == "tool_use":
            blocks.append({**data["content_block"], "json": ""})
        elif kind == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            blocks[-1]["json"] += data["delta"]["partial_json"]
    for block in blocks:
        block["input"] = orjson.loads(block.pop("json") or "{}")
    return blocks


def test_a_tool_name_in_pieces_and_an_id_on_a_later_delta_are_kept_whole():
    """OpenAI's grammar lets `function.name` and `id` come on any delta (review 23t)."""
    raw = b"".join([
        chunk(tool_calls=[{"index": 0, "function": {"name": "get_", "arguments": ""}}]),
        chunk(tool_calls=[{"index": 0, "id": "call_A", "function": {"name": "weather"}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"city": "Oslo"}'}}]),
        chunk(finish="tool_calls"),
    ])  # fmt: skip
    stream = MessageStream("m", [])
    blocks = _tool_blocks(stream.feed(raw) + stream.end())
    assert blocks == [{"type": "tool_use", "id": "call_A", "name": "get_weather",
                       "input": {"city": "Oslo"}}]  # fmt: skip


def test_tool_arguments_that_are_not_json_come_as_raw_like_the_whole_answer():
    """A small model's broken arguments: the SDK's stream would raise parsing them (review 23t);
    the non-streamed answer keeps them as {"_raw": text}, and so does the stream."""
    stream = MessageStream("m", [])
    raw = chunk(
        tool_calls=[{"index": 0, "id": "c", "function": {"name": "w", "arguments": '{"city": Par'}}]
    )
    blocks = _tool_blocks(stream.feed(raw + chunk(finish="tool_calls")) + stream.end())
    assert [b["input"] for b in blocks] == [{"_raw": '{"city": Par'}]
