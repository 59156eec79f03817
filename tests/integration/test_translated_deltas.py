"""Every kind of delta through a real gateway's translations, from a fake reasoning engine that
interleaves two parallel tool calls: Anthropic's stream and message, Ollama's stream and answer,
each checked against the SDK's own types and carrying the thinking and both calls' arguments."""

# The SDKs type their answers as unions of every block kind; these tests read the kinds asked.
# pyright: reportAttributeAccessIssue=false, reportArgumentType=false, reportOptionalSubscript=false, reportOptionalIterable=false

from __future__ import annotations

import anthropic
import httpx
import ollama
import orjson

from tests.conftest import fake_cmd, free_port
from tests.unit.test_translation_properties import anthropic_events, anthropic_message

THOUGHT = "The user wants two cities."
ANTHROPIC_TOOLS = [{"name": "weather", "input_schema": {"type": "object"}}]
OLLAMA_TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
CALLS = [{"city": "Paris"}, {"city": "Oslo"}]


def start(gateway):
    cmd = fake_cmd("--no-messages", "--reasoning", THOUGHT, "--parallel-calls", "2")
    port = free_port()
    model = {"engine": "command", "cmd": cmd, "aliases": ["claude-*", "qwen3"]}
    return gateway({"ollama_port": port, "models": {"thinker": model}}), port


def test_anthropic_gets_thinking_and_both_interleaved_calls(gateway):
    gw, _ = start(gateway)
    messages = [{"role": "user", "content": "weather?"}]
    body = {"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": True,
            "tools": ANTHROPIC_TOOLS, "messages": messages}  # fmt: skip
    with httpx.stream("POST", f"{gw.url}/v1/messages", json=body, timeout=60) as resp:
        raw = b"".join(resp.iter_bytes())
    message = anthropic_message(anthropic_events(raw))  # each event checked by the SDK's types
    content = message["content"]
    assert [b["type"] for b in content] == ["thinking", "tool_use", "tool_use"]
    assert content[0]["thinking"] == THOUGHT
    assert [b["input"] for b in content[1:]] == CALLS
    assert message["stop_reason"] == "tool_use"
    c = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    whole = c.messages.create(model="claude-sonnet-4-5", max_tokens=50, tools=ANTHROPIC_TOOLS,
                              messages=[{"role": "user", "content": "weather?"}])  # fmt: skip
    assert [b.type for b in whole.content] == ["thinking", "tool_use", "tool_use"]
    assert whole.content[0].thinking == THOUGHT
    assert [b.input for b in whole.content[1:]] == CALLS


def test_ollama_gets_thinking_and_both_interleaved_calls(gateway):
    _, port = start(gateway)
    client = ollama.Client(host=f"http://127.0.0.1:{port}")
    messages = [{"role": "user", "content": "weather?"}]
    parts = list(client.chat(model="qwen3", messages=messages, tools=OLLAMA_TOOLS, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == THOUGHT
    calls = [c for p in parts for c in p.message.tool_calls or ()]
    assert [dict(c.function.arguments) for c in calls] == CALLS
    assert parts[-1].done and parts[-1].done_reason == "stop"
    whole = client.chat(model="qwen3", messages=messages, tools=OLLAMA_TOOLS, stream=False)
    assert whole.message.thinking == THOUGHT
    assert [dict(c.function.arguments) for c in whole.message.tool_calls] == CALLS
    answer = client.generate(model="qwen3", prompt="why?", stream=False)
    assert answer.thinking == THOUGHT and answer.response
    lines = httpx.post(f"http://127.0.0.1:{port}/api/generate", timeout=60,
                       json={"model": "qwen3", "prompt": "why?"}).content.splitlines()  # fmt: skip
    streamed = [ollama.GenerateResponse.model_validate(orjson.loads(line)) for line in lines]
    assert "".join(x.thinking or "" for x in streamed) == THOUGHT
