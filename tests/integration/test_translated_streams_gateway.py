"""Translated streams behind a real `vramgate serve`, read by the real anthropic and ollama
SDKs, from a raw engine sending exact SSE bytes 7 at a time (review 23t): a tool name in pieces
with its id on the first delta, arguments that are not JSON, one 9 MiB delta, and timings too
big for nanoseconds."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import orjson

from tests.conftest import free_port, gateway  # noqa: F401  (the fixture)

RAW = Path(__file__).with_name("raw_sse_engine.py")
TOOLS = [{"name": "w", "input_schema": {"type": "object"}}]


def event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def choice(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    return event(
        {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
    )


def call(**fields: Any) -> dict[str, Any]:
    return {"tool_calls": [{"index": 0, **fields}]}


def start(gateway, tmp_path: Path, script: bytes, answer: dict[str, Any] | None = None):  # noqa: F811
    (tmp_path / "s.sse").write_bytes(script)
    (tmp_path / "a.json").write_bytes(orjson.dumps(answer or {}))
    port = free_port()
    cmd = (f"{sys.executable} {RAW} --port ${{PORT}} --script {tmp_path / 's.sse'}"
           f" --json {tmp_path / 'a.json'}")  # fmt: skip
    gw = gateway({"ollama_port": port, "models": {"raw": {"engine": "command", "cmd": cmd,
                                                          "aliases": ["claude-*"]}}})  # fmt: skip
    return gw, port


def anthropic_message(gw, **kw: Any) -> Any:
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    with client.messages.stream(
        model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "hi"}], **kw
    ) as s:
        return s.get_final_message()


def test_a_tool_name_in_pieces_reaches_both_sdks_whole(gateway, tmp_path):  # noqa: F811
    script = (choice(call(function={"name": "get_", "arguments": ""}))
              + choice(call(id="call_A", type="function", function={"name": "weather"}))
              + choice(call(function={"arguments": '{"c": 1}'}), "tool_calls")
              + b"data: [DONE]\n\n")  # fmt: skip
    gw, port = start(gateway, tmp_path, script)
    message = anthropic_message(gw, tools=TOOLS)
    assert [(b.id, b.name, b.input) for b in message.content] == [
        ("call_A", "get_weather", {"c": 1})
    ]
    parts = ollama.Client(host=f"http://127.0.0.1:{port}").chat(
        model="raw", messages=[{"role": "user", "content": "hi"}], stream=True)  # fmt: skip
    assert [c.function.name for p in parts for c in p.message.tool_calls or ()] == ["get_weather"]


def test_arguments_that_are_not_json_do_not_break_the_anthropic_sdk(gateway, tmp_path):  # noqa: F811
    script = (choice(call(id="c", function={"name": "w", "arguments": '{"city": Par'}))
              + choice({}, "tool_calls") + b"data: [DONE]\n\n")  # fmt: skip
    gw, _ = start(gateway, tmp_path, script)
    message = anthropic_message(gw, tools=TOOLS)
    assert [(b.type, b.input) for b in message.content] == [("tool_use", {"_raw": '{"city": Par'})]


def test_a_9_mib_delta_reaches_the_anthropic_sdk_whole(gateway, tmp_path):  # noqa: F811
    big = "y" * (9 << 20)
    gw, _ = start(gateway, tmp_path, choice({"content": big}) + choice({}, "stop"))
    message = anthropic_message(gw)
    assert len("".join(b.text for b in message.content)) == len(big)


def test_timings_too_big_for_nanoseconds_are_absent_not_a_500(gateway, tmp_path):  # noqa: F811
    answer = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": "hi"}}],
              "timings": {"prompt_ms": 1e308, "predicted_ms": 1e308}}  # fmt: skip
    _, port = start(gateway, tmp_path, b"", answer)
    r = httpx.post(f"http://127.0.0.1:{port}/api/chat", timeout=60,
                   json={"model": "raw", "stream": False,
                         "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["message"]["content"] == "hi" and r.json()["prompt_eval_duration"] == 0


# -- an engine that serves /v1/messages itself: its error mid-stream in Anthropic's shape ------


def native(gateway, tmp_path: Path, script: bytes):  # noqa: F811
    (tmp_path / "s.sse").write_bytes(script)
    (tmp_path / "a.json").write_bytes(b"{}")
    cmd = (f"{sys.executable} {RAW} --port ${{PORT}} --script {tmp_path / 's.sse'}"
           f" --json {tmp_path / 'a.json'}")  # fmt: skip
    model = {"engine": "command", "cmd": cmd, "aliases": ["claude-*"], "native_apis": ["anthropic"]}
    return gateway({"models": {"raw": model}})


def anthropic_event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


OPENING = (
    anthropic_event("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 0}}})
    + anthropic_event("content_block_start", {"type": "content_block_start", "index": 0,
                                              "content_block": {"type": "text", "text": ""}})
    + anthropic_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": "an error"}})
)  # fmt: skip


def test_an_engines_own_error_mid_stream_reaches_the_anthropic_sdk_as_an_error(
    gateway,  # noqa: F811
    tmp_path,
):
    """llama-server's shape of an error event (`data: {"error": {...}}`, OpenAI's) was relayed
    as it came: the anthropic SDK skips an unnamed event, so the answer just ended, short and
    without a word of why (review 23: errors in the asked API's shape, mid-stream too)."""
    error = {"code": 500, "message": "boom: the KV cache is full", "type": "server_error"}
    failure = b"data: " + orjson.dumps({"error": error}) + b"\n\n"
    gw = native(gateway, tmp_path, OPENING + failure)
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    try:
        with client.messages.stream(
            model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as s:
            texts = list(s.text_stream)
    except anthropic.APIStatusError as exc:
        assert "boom: the KV cache is full" in str(exc), exc
        assert exc.body["error"]["type"] == "api_error", exc.body  # type: ignore[index]
    else:
        raise AssertionError(f"the stream ended without an error: {texts}")
    # Relayed as it is otherwise: a text delta that says "error" is the engine's own words.
    with httpx.stream("POST", gw.url + "/v1/messages", json={
            "model": "claude-x", "max_tokens": 5, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}) as resp:  # fmt: skip
        raw = b"".join(resp.iter_bytes())
    assert raw.startswith(OPENING), raw[:300]
    tail = raw[len(OPENING) :]
    assert tail.startswith(b"event: error\ndata: {") and b'"type":"error"' in tail, tail


def test_an_anthropic_shaped_error_event_is_relayed_as_it_is(gateway, tmp_path):  # noqa: F811
    error = anthropic_event("error", {"type": "error", "error": {
        "type": "overloaded_error", "message": "busy"}})  # fmt: skip
    gw = native(gateway, tmp_path, OPENING + error)
    with httpx.stream("POST", gw.url + "/v1/messages", json={
            "model": "claude-x", "max_tokens": 5, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}) as resp:  # fmt: skip
        raw = b"".join(resp.iter_bytes())
    assert raw == OPENING + error, raw
