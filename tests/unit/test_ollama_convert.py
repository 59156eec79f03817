"""Ollama's API to and from OpenAI's, case by case; NDJSON streams from SSE split anywhere."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from vramgate.api import ollama_convert as convert
from vramgate.api.ollama_convert import (
    chat_request,
    chat_response,
    embed_request,
    embed_response,
    generate_request,
    keep_alive_s,
    listed_name,
    model_label,
)
from vramgate.api.ollama_stream import NdjsonStream
from vramgate.errors import BadRequest

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


def test_options_map_onto_openai_fields_and_the_rest_is_dropped():
    chat = chat_request(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"temperature": 0.1, "num_predict": 7, "top_p": 0.5, "top_k": 3,
                        "stop": ["\n"], "seed": 42, "num_ctx": 4096, "mirostat": 1},
            "stream": False,
        },
        "m",
    )  # fmt: skip
    assert chat == {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                    "temperature": 0.1, "max_tokens": 7, "top_p": 0.5, "top_k": 3,
                    "stop": ["\n"], "seed": 42}  # fmt: skip


def test_chat_streams_by_default_as_ollama_does():
    chat = chat_request({"messages": [{"role": "user", "content": "hi"}]}, "m")
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


def test_format_json_or_a_schema_becomes_structured_output():
    base = {"messages": [{"role": "user", "content": "hi"}], "stream": False}
    assert chat_request({**base, "format": "json"}, "m")["response_format"] == {
        "type": "json_object"
    }
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    out = chat_request({**base, "format": schema}, "m")["response_format"]
    assert out == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    with pytest.raises(BadRequest, match="format"):
        chat_request({**base, "format": 3}, "m")


def test_tool_calls_get_ids_and_tool_results_are_matched_to_them_in_order():
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "weather", "arguments": {"city": "Oslo"}}},
        ]},
        {"role": "tool", "content": "sunny", "tool_name": "weather"},
        {"role": "tool", "content": "rain", "tool_name": "weather"},
    ]  # fmt: skip
    tool = {"type": "function", "function": {"name": "weather"}}
    chat = chat_request({"messages": messages, "tools": [tool]}, "m")
    calls = chat["messages"][1]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_1", "call_2"]
    assert calls[0]["function"] == {"name": "weather", "arguments": '{"city":"Paris"}'}
    assert [m["tool_call_id"] for m in chat["messages"][2:]] == ["call_1", "call_2"]
    assert chat["tools"] == [tool]


def test_images_become_data_urls_with_their_type_or_a_400():
    body = {"messages": [{"role": "user", "content": "what?", "images": [PNG]}]}
    content = chat_request(body, "m")["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "what?"}
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,iVBOR")
    with pytest.raises(BadRequest, match="does not take images"):
        chat_request(body, "m", vision=False)


def test_generate_is_one_chat_turn_unless_raw():
    is_chat, chat = generate_request({"prompt": "hi", "system": "be brief", "stream": False}, "m")
    assert is_chat and [m["role"] for m in chat["messages"]] == ["system", "user"]
    is_chat, raw = generate_request({"prompt": "1 2 3", "raw": True, "suffix": "9"}, "m")
    assert not is_chat and raw["prompt"] == "1 2 3" and raw["suffix"] == "9" and raw["stream"]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), (0, 0.0), ("0", 0.0), (300, 300.0), ("5m", 300.0), ("1h30m", 5400.0),
     ("-1", -1.0), (-1, -1.0), ("250ms", 0.25), ("10s", 10.0)],
)  # fmt: skip
def test_keep_alive_durations(value, seconds):
    assert keep_alive_s(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", True, [1], "5m3"])
def test_a_bad_keep_alive_is_a_400(value):
    with pytest.raises(BadRequest, match="keep_alive"):
        keep_alive_s(value)


def test_names_with_and_without_tags():
    assert model_label("smollm2:latest") == "smollm2" and model_label("qwen:7b") == "qwen:7b"
    assert listed_name("smollm2") == "smollm2:latest" and listed_name("a/b:q4") == "a/b:q4"


def test_a_chat_answer_with_tool_calls_as_ollamas():
    answer = {"choices": [{"finish_reason": "tool_calls", "message": {"content": "", "tool_calls": [
        {"id": "c", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5}}  # fmt: skip
    out = chat_response(answer, "m:latest", time.perf_counter())
    assert out["message"]["tool_calls"] == [
        {"function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    ]
    assert out["done"] and out["done_reason"] == "stop" and out["model"] == "m:latest"
    assert (out["prompt_eval_count"], out["eval_count"]) == (3, 5)
    assert out["total_duration"] > 0 and out["created_at"].endswith("Z")


def test_embeddings_both_ways():
    assert embed_request({"input": ["a", "b"]}, "m") == {"model": "m", "input": ["a", "b"]}
    assert embed_request({"prompt": "a"}, "m") == {"model": "m", "input": "a"}
    with pytest.raises(BadRequest, match="input"):
        embed_request({"input": [1, 2]}, "m")
    answer = {"data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}]}
    out = embed_response(answer, "m", time.perf_counter(), old=False)
    assert out is not None and out["embeddings"] == [[1.0], [2.0]]
    assert embed_response(answer, "m", time.perf_counter(), old=True) == {"embedding": [1.0]}
    assert embed_response({"data": [{"index": 0}]}, "m", time.perf_counter(), old=False) is None


def sse(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"choices": [{"delta": delta or {}, "finish_reason": finish}]}
    return b"data: " + orjson.dumps({**body, **extra}) + b"\n\n"


STREAM = b"".join([
    sse({"content": "Hel"}),
    sse({"content": "lo"}),
    sse({"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": '{"ci'}}]}),
    sse({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]}),
    sse(finish="tool_calls"),
    b'data: {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}\n\n',
    b"data: [DONE]\n\n",
])  # fmt: skip


def test_a_chat_stream_as_ndjson_lines_however_it_is_split():
    for cut in range(1, len(STREAM)):
        stream = NdjsonStream("m", time.perf_counter(), generate=False)
        raw = stream.feed(STREAM[:cut]) + stream.feed(STREAM[cut:]) + stream.end()
        lines = [orjson.loads(line) for line in raw.splitlines()]
        assert "".join(x["message"]["content"] for x in lines) == "Hello"
        calls = [x["message"]["tool_calls"] for x in lines if "tool_calls" in x["message"]]
        assert calls == [[{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}]]
        assert [x["done"] for x in lines][-1] is True and not any(x["done"] for x in lines[:-1])
        assert lines[-1]["eval_count"] == 3 and lines[-1]["done_reason"] == "stop"


def test_a_generate_stream_has_response_lines_and_errors_end_it():
    stream = NdjsonStream("m", time.perf_counter(), generate=True, is_chat=False)
    raw = stream.feed(b'data: {"choices": [{"text": "a", "finish_reason": null}]}\n\n')
    raw += stream.feed(b'data: {"error": {"message": "engine died"}}\n\n') + stream.end()
    lines = [orjson.loads(line) for line in raw.splitlines()]
    assert lines[0]["response"] == "a" and lines[-1] == {"error": "engine died"}


def test_a_chat_stream_carries_the_models_thinking():
    raw = b"".join([
        sse({"reasoning_content": "Hm, "}),
        sse({"reasoning_content": "two."}),
        sse({"content": "2"}),
        sse(finish="stop"),
    ])  # fmt: skip
    stream = NdjsonStream("m", time.perf_counter(), generate=False)
    lines = [orjson.loads(line) for line in (stream.feed(raw) + stream.end()).splitlines()]
    assert "".join(x["message"].get("thinking", "") for x in lines) == "Hm, two."
    assert "".join(x["message"]["content"] for x in lines) == "2"
    generate = NdjsonStream("m", time.perf_counter(), generate=True)
    lines = [orjson.loads(line) for line in (generate.feed(raw) + generate.end()).splitlines()]
    assert "".join(x.get("thinking", "") for x in lines) == "Hm, two."


def test_a_whole_generate_answer_carries_thinking():
    answer = {"choices": [{"message": {"content": "2", "reasoning_content": "two"}}]}
    out = convert.generate_response(answer, "m", time.perf_counter(), True)
    assert (out["response"], out["thinking"]) == ("2", "two")


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ({"role": "user", "content": "x", "images": "aGk="}, r"messages\[0\]\.images"),
        ({"role": "user", "content": "x", "images": 5}, r"messages\[0\]\.images"),
        ({"role": "user", "content": "x", "images": [5]}, r"images"),
        ({"role": "assistant", "content": "", "tool_calls": {"a": 1}}, r"tool_calls"),
        ({"role": "assistant", "content": "", "tool_calls": ["f"]}, r"tool_calls\[0\]"),
        ({"role": "assistant", "content": "", "tool_calls": [{"function": "f"}]},
         r"tool_calls\[0\]\.function"),
        ({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": 1}}]},
         r"function\.name"),
        ({"role": "wizard", "content": "x"}, r"messages\[0\]\.role"),
    ],
)  # fmt: skip
def test_mistyped_messages_are_a_400(message, says):
    with pytest.raises(BadRequest, match=says):
        convert.chat_request({"model": "m", "messages": [message]}, "m")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"tools": ["f"]}, r"tools\[0\]"),
        ({"tools": [{"type": "function", "function": {"name": 2}}]}, r"tools\[0\]\.function"),
        ({"options": {"temperature": "hot"}}, r"options\.temperature"),
        ({"options": {"stop": [1]}}, r"options\.stop"),
    ],
)
def test_mistyped_fields_are_a_400(body, says):
    with pytest.raises(BadRequest, match=says):
        convert.chat_request({"model": "m", "messages": [], **body}, "m")


def test_generate_checks_its_fields():
    for body, says in (({"prompt": "x", "images": "aGk="}, "images"), ({"system": 5}, "system"),
                       ({"suffix": 5, "raw": True}, "suffix")):  # fmt: skip
        with pytest.raises(BadRequest, match=says):
            convert.generate_request({"model": "m", **body}, "m")


@pytest.mark.parametrize("depth", [300, 1000])
def test_tool_arguments_nested_past_the_bound_are_kept_as_text_both_ways(depth):
    """Review suspicion: an engine's argument string nested 256-1024 levels parsed, then the
    answer failed to serialise (orjson writes 255 levels): a 500 for the engine's output. Past
    MAX_DEPTH it is kept as the text the model wrote, in Ollama's answer and Anthropic's."""
    from vramgate.api.anthropic_convert import from_chat_response

    deep = '{"a":' + "[" * depth + "]" * depth + "}"
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": deep}}]
    assert convert.tool_calls(calls) == [{"function": {"name": "f", "arguments": {"_raw": deep}}}]
    orjson.dumps(convert.tool_calls(calls))
    answer = {"choices": [{"message": {"role": "assistant", "tool_calls": calls},
                           "finish_reason": "tool_calls"}]}  # fmt: skip
    block = from_chat_response(answer, "m", [])["content"][0]
    assert block["input"] == {"_raw": deep}
    orjson.dumps(block)


@pytest.mark.parametrize("ms", [1e308, -5.0, 1e300, "12", True])
def test_engine_timings_that_are_huge_or_not_durations_read_as_absent(ms):
    """llama-server's timings in milliseconds: 1e308 was int(inf), an OverflowError and a 500
    (review 23t); what is not a duration reads as absent, as checks.py has every engine field."""
    timings = {"prompt_ms": ms, "predicted_ms": ms}
    began = time.perf_counter()
    choice = {"message": {"content": "hi"}, "finish_reason": "stop"}
    answer = {"choices": [choice], "usage": {"prompt_tokens": 1}, "timings": timings}
    whole = convert.chat_response(answer, "m", began)
    assert whole["prompt_eval_duration"] == 0
    assert 0 <= whole["eval_duration"] <= whole["total_duration"]
    stream = NdjsonStream("m", began, generate=False)
    raw = stream.feed(sse({"content": "hi"}, "stop", timings=timings)) + stream.end()
    done = orjson.loads(raw.splitlines()[-1])
    assert done["done"] is True and done["prompt_eval_duration"] == 0
    orjson.dumps(whole)


def test_engine_timings_in_range_are_kept_as_nanoseconds():
    answer = {"choices": [], "timings": {"prompt_ms": 1.5, "predicted_ms": 20}}
    whole = convert.chat_response(answer, "m", time.perf_counter())
    assert (whole["prompt_eval_duration"], whole["eval_duration"]) == (1_500_000, 20_000_000)
