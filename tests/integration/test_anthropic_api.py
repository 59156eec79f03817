"""Anthropic's Messages API through the gateway, driven by the `anthropic` SDK as agents use it:
relayed to an engine that serves it (the fake engine does) and translated for one that does not
(`--no-messages`), with the same answers either way."""

# The SDKs type their payloads as TypedDicts and their answers as unions of every block
# kind; these tests build plain dicts and read the kinds they asked for.
# pyright: reportArgumentType=false, reportAttributeAccessIssue=false, reportOptionalMemberAccess=false, reportOperatorIssue=false, reportCallIssue=false, reportOptionalSubscript=false, reportIndexIssue=false

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from tests.conftest import fake_cmd, wait_until

TOOLS = [
    {
        "name": "weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


def models(**extra) -> dict:
    return {
        "native": {
            "engine": "command",
            "cmd": fake_cmd(),
            "native_apis": ["anthropic"],
            "aliases": ["claude-*-haiku-*"],
            **extra,
        },
        "translated": {
            "engine": "command",
            "cmd": fake_cmd("--no-messages"),
            "aliases": ["claude-sonnet-*", "claude-sonnet-4-5-*"],
            **extra,
        },
    }


def client(gw, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def last_body(gw, model: str) -> dict:
    return httpx.get(gw.model(model)["url"] + "/stats", timeout=5).json()["last"]


@pytest.mark.parametrize("model", ["claude-3-5-haiku-20241022", "claude-sonnet-4-5-20250929"])
def test_create_and_stream_relayed_or_translated(gateway, model):
    gw = gateway({"models": models()})
    c = client(gw)
    reply = c.messages.create(
        model=model,
        max_tokens=3,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[
            {"role": "user", "content": "one two"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "three"},
        ],
    )
    assert reply.content[0].type == "text" and reply.content[0].text == "tok0 tok1 tok2 "
    assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == 3
    assert reply.usage.input_tokens == 6  # the fake's tokens are words: system + 3 turns
    with c.messages.stream(
        model=model, max_tokens=4, messages=[{"role": "user", "content": "x"}]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "tok0 tok1 tok2 tok3 " and final.stop_reason == "max_tokens"
    served = "native" if "haiku" in model else "translated"
    assert gw.model(served)["requests"] == 2
    count = c.messages.count_tokens(model=model, messages=[{"role": "user", "content": "a b c"}])
    assert count.input_tokens == 3


def test_translation_carries_sampling_stops_and_drops_what_engines_cannot_take(gateway):
    gw = gateway({"models": models()})
    client(gw).messages.create(
        model="claude-sonnet-4-5",
        max_tokens=5,
        stop_sequences=["END"],
        metadata={"user_id": "u1"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        service_tier="auto",
        messages=[{"role": "user", "content": "hi"}],
        # Older SDKs (and Claude Code) send these; this one has no parameters for them.
        extra_body={"temperature": 0.3, "top_p": 0.8, "top_k": 7, "speed": "fast"},
    )
    sent = last_body(gw, "translated")
    assert {k: sent[k] for k in ("temperature", "top_p", "top_k", "stop", "max_tokens")} == {
        "temperature": 0.3,
        "top_p": 0.8,
        "top_k": 7,
        "stop": ["END"],
        "max_tokens": 5,
    }
    assert "metadata" not in sent and "thinking" not in sent and sent["model"] == "translated"


@pytest.mark.parametrize("model", ["claude-3-5-haiku-20241022", "claude-sonnet-4-5"])
def test_a_tool_use_round_trip(gateway, model):
    gw = gateway({"models": models()})
    c = client(gw)
    ask = [{"role": "user", "content": "What is the weather?"}]
    first = c.messages.create(model=model, max_tokens=50, tools=TOOLS, messages=ask)
    assert first.stop_reason == "tool_use"
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert call.name == "weather" and call.input == {"city": "Paris"}
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}
    turn = [
        *ask,
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [result]},
    ]
    second = c.messages.create(model=model, max_tokens=50, tools=TOOLS, messages=turn)
    assert second.content[0].text == "the tool said: sunny, 21 C"
    with c.messages.stream(model=model, max_tokens=50, tools=TOOLS, messages=ask) as s:
        streamed = s.get_final_message()
    assert streamed.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in streamed.content] == [("weather", {"city": "Paris"})]


def test_errors_come_in_anthropics_shape(gateway):
    gw = gateway({"auth": {"api_keys": ["k"]}, "models": models(api_keys=["own"])}, key="k")
    with pytest.raises(anthropic.NotFoundError) as missing:
        client(gw, "k").messages.create(
            model="gpt-4", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError):
        client(gw, "wrong").messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.PermissionDeniedError):
        client(gw, "k").messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    no_max = httpx.post(
        f"{gw.url}/v1/messages",
        headers={"x-api-key": "own"},
        json={"model": "translated", "messages": [{"role": "user", "content": "x"}]},
    )
    assert no_max.status_code == 400
    message = "max_tokens: Field required (a positive integer)"
    error = {"type": "invalid_request_error", "message": message}
    assert no_max.json() == {"type": "error", "error": error}
    bad = httpx.post(f"{gw.url}/v1/messages", headers={"x-api-key": "own"}, content=b"{nope")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_claude_codes_turn_passes_with_its_query_string_beta_fields_and_huge_max_tokens(gateway):
    """As Claude Code sends every turn: `?beta=true`, streamed, ~125 KB, 25 tools, thinking,
    context management, `max_tokens: 32000`, beta headers, a system message among the turns."""
    gw = gateway({"models": {**models(args=["-c", "2048"])}})
    tools = [
        {
            "name": f"Tool{i}",
            "description": "d" * 4000,
            "input_schema": {"type": "object", "properties": {"p": {"type": "string"}}},
            "cache_control": {"type": "ephemeral"},
        }
        for i in range(25)
    ]
    body = {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {
                "type": "text",
                "text": "You are Claude Code." * 1000,
                "cache_control": {"type": "ephemeral"},
            }
        ],
        # Claude Code 2.1 puts a system message after the user's (its list of agents).
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hello"}]},
            {"role": "system", "content": "Available agent types: claude, Explore."},
        ],
        "tools": tools,
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
        "metadata": {"user_id": "user_abc_account_def_session_ghi"},
        "temperature": 1,
    }
    raw = json.dumps(body).encode()
    assert len(raw) > 100_000
    headers = {
        "x-api-key": "k",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
        "content-type": "application/json",
    }
    with httpx.stream(
        "POST", f"{gw.url}/v1/messages?beta=true", content=raw, headers=headers, timeout=30
    ) as resp:
        assert resp.status_code == 200
        events = [line[7:] for line in resp.iter_lines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    sent = last_body(gw, "translated")
    assert "max_tokens" not in sent  # 32000 >= its 2048 context: capped to the context
    assert len(sent["tools"]) == 25 and "cache_control" not in json.dumps(sent["tools"])
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["system", "user"] and "Available agent types" in sent["messages"][0]["content"]


def test_images_are_a_clear_400_for_a_model_that_takes_none(gateway):
    gw = gateway({"models": models(vision=False)})
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    with pytest.raises(anthropic.BadRequestError, match="does not take images"):
        client(gw).messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": [image]}]
        )


def test_a_cold_start_streams_pings_and_a_failed_one_ends_with_an_error_event(gateway):
    slow = {"engine": "command", "cmd": fake_cmd("--no-messages", "--load-delay", "2.5")}
    broken = {"engine": "command", "cmd": fake_cmd("--load-delay", "2.5", "--fail-start")}
    gw = gateway({"stream_keepalive_s": 1, "models": {"slow": slow, "broken": broken}})
    body = {
        "model": "slow",
        "max_tokens": 2,
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
    }
    with httpx.stream("POST", f"{gw.url}/v1/messages", json=body, timeout=30) as resp:
        events = [line[7:] for line in resp.iter_lines() if line.startswith("event: ")]
    # One every second of a 2.5 s start: at least two, more on a loaded machine.
    pings = events.index("message_start")
    assert pings >= 2 and set(events[:pings]) == {"ping"}, events
    assert events[-1] == "message_stop"
    with httpx.stream(
        "POST", f"{gw.url}/v1/messages", json={**body, "model": "broken"}, timeout=30
    ) as resp:
        assert resp.status_code == 200  # promised before the start failed
        lines = list(resp.iter_lines())
    assert lines[0] == "event: ping" and "event: error" in lines
    error = json.loads(lines[lines.index("event: error") + 1][6:])
    assert error["type"] == "error" and "failed to start" in error["error"]["message"]


def test_metrics_and_the_overhead_header_cover_the_messages_routes(gateway):
    gw = gateway({"models": models()})
    resp = httpx.post(
        f"{gw.url}/v1/messages",
        json={
            "model": "translated",
            "max_tokens": 1,
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    assert resp.status_code == 200 and float(resp.headers["x-vramgate-overhead-ms"]) >= 0
    metrics = gw.http.get("/metrics").text
    assert 'route="/v1/messages"' in metrics


def test_a_client_that_hangs_up_mid_stream_cancels_the_engines_work(gateway):
    paced = {"engine": "command", "cmd": fake_cmd("--no-messages", "--tokens-per-s", "10")}
    gw = gateway({"models": {"paced": paced}})
    body = {"model": "paced", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "x"}]}  # fmt: skip
    with httpx.stream("POST", f"{gw.url}/v1/messages", json=body, timeout=30) as resp:
        for line in resp.iter_lines():
            if "text_delta" in line:
                break  # one token in, of fifty: hang up
    url = gw.model("paced")["url"]
    assert wait_until(lambda: httpx.get(url + "/stats").json()["cancelled"] == 1, 5)
