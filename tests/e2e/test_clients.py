"""Every client against real engines: the `anthropic` and `ollama` SDKs with llama-server and
SmolLM2-135M-Instruct, relayed where llama-server serves the API itself (`/v1/messages`) and
translated where it is told not to (`native_apis: []`), and Anthropic's API on `transformers
serve`, which has none of its own."""

# The SDKs type their payloads as TypedDicts and their answers as unions of every block
# kind; these tests build plain dicts and read the kinds they asked for.
# pyright: reportArgumentType=false, reportAttributeAccessIssue=false, reportOptionalMemberAccess=false, reportOperatorIssue=false, reportCallIssue=false, reportOptionalSubscript=false, reportIndexIssue=false

from __future__ import annotations

import anthropic
import ollama

from tests.conftest import free_port
from tests.e2e.test_llama_server import BINARY, CHAT_GGUF, GGUF, _require_e2e
from tests.e2e.test_transformers import CHAT_HF, needs_transformers

ASK = [{"role": "user", "content": "What is the capital of France?"}]
SYSTEM = "You are a helpful assistant. Answer in one short sentence."


def smollm2(**extra) -> dict:
    return {"engine": "llamacpp", "source": CHAT_GGUF, "args": ["-c", "2048"], **extra}


def test_anthropic_sdk_on_llama_server_relayed_and_translated(gateway):
    _require_e2e(("chat GGUF", CHAT_GGUF))
    gw = gateway(
        {
            "engines": {"llamacpp": {"binary": BINARY}},
            "models": {
                "relayed": smollm2(aliases=["claude-*-haiku-*"]),
                "translated": smollm2(native_apis=[], aliases=["claude-sonnet-*"]),
            },
        }
    )
    c = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    for model in ("claude-3-5-haiku-20241022", "claude-sonnet-4-5-20250929"):
        reply = c.messages.create(
            model=model, max_tokens=24, system=SYSTEM, messages=ASK, extra_body={"temperature": 0}
        )
        assert reply.content[0].type == "text" and "Paris" in reply.content[0].text, reply
        assert reply.usage.input_tokens > 10 and 0 < reply.usage.output_tokens <= 24
        with c.messages.stream(model=model, max_tokens=8, system=SYSTEM, messages=ASK) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        assert text and final.usage.output_tokens > 0
        count = c.messages.count_tokens(model=model, system=SYSTEM, messages=ASK)
        assert 10 < count.input_tokens < 100
    # A max_tokens far above the model's 2048-token context is capped, not refused (streamed,
    # as Claude Code asks: the SDK itself refuses such a max_tokens without a stream).
    for model in ("claude-3-5-haiku-20241022", "claude-sonnet-4-5"):
        with c.messages.stream(
            model=model, max_tokens=32000, messages=ASK, system=SYSTEM, stop_sequences=["."]
        ) as s:
            big = s.get_final_message()
        assert big.content[0].text, big


def test_ollama_sdk_on_llama_server(gateway):
    _require_e2e(("chat GGUF", CHAT_GGUF))
    port = free_port()
    embed = {
        "engine": "llamacpp",
        "source": GGUF,
        "task": "embed",
        "args": ["-c", "512", "--pooling", "mean"],
    }
    gateway(
        {
            "ollama_port": port,
            "engines": {"llamacpp": {"binary": BINARY}},
            "models": {"smollm2": smollm2(), "gemma-embed": embed},
        }
    )
    c = ollama.Client(host=f"http://127.0.0.1:{port}")
    messages = [{"role": "system", "content": SYSTEM}, *ASK]
    reply = c.chat(
        model="smollm2:latest",
        messages=messages,
        stream=False,
        options={"temperature": 0, "num_predict": 24},
    )
    assert "Paris" in reply.message.content and reply.eval_count and reply.prompt_eval_count
    streamed = "".join(
        p.message.content
        for p in c.chat(model="smollm2", messages=messages, stream=True, options={"num_predict": 8})
    )
    assert streamed
    generated = c.generate(model="smollm2", prompt="Say hi.", options={"num_predict": 8})
    assert generated.response and generated.done
    vectors = c.embed(model="gemma-embed", input=["Paris", "France"]).embeddings
    assert len(vectors) == 2 and len(vectors[0]) > 100
    assert {m.model for m in c.ps().models} >= {"smollm2:latest", "gemma-embed:latest"}
    shown = c.show("smollm2")
    assert "completion" in (shown.capabilities or []) and shown.modelinfo
    assert shown.modelinfo.get("llama.context_length") == 2048


def test_anthropic_sdk_on_transformers_translated(gateway):
    needs_transformers()
    gw = gateway(
        {
            "models": {
                "smol": {
                    "engine": "transformers",
                    "source": CHAT_HF,
                    "device": "cpu",
                    "aliases": ["claude-*"],
                }
            }
        }
    )
    c = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    reply = c.messages.create(model="claude-sonnet-4-5", max_tokens=16, system=SYSTEM, messages=ASK)
    assert reply.content[0].text and reply.model == "claude-sonnet-4-5"
    with c.messages.stream(model="claude-opus-4", max_tokens=8, messages=ASK) as s:
        assert "".join(s.text_stream)
