"""Ollama's API through the gateway, driven by the `ollama` SDK as editors and tools use it: on
its own port (`ollama_port`), chat and generate streamed and not, embeddings, the model list and
what runs, show, pull from a (local) Hub, delete, keep_alive; errors as Ollama sends them."""

# The SDKs type their payloads as TypedDicts and their answers as unions of every block
# kind; these tests build plain dicts and read the kinds they asked for.
# pyright: reportArgumentType=false, reportAttributeAccessIssue=false, reportOptionalMemberAccess=false, reportOperatorIssue=false, reportCallIssue=false, reportOptionalSubscript=false, reportIndexIssue=false

from __future__ import annotations

import httpx
import ollama
import pytest

from tests.conftest import fake_cmd, free_port, wait_until
from tests.integration.test_inventory import stand_in
from tests.unit.test_estimate import make_gguf

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


def config(**extra) -> dict:
    port = free_port()
    return {
        "ollama_port": port,
        "models": {
            "chat": {"engine": "command", "cmd": fake_cmd(), "aliases": ["llama3.2"]},
            "embed": {
                "engine": "command",
                "cmd": fake_cmd("--embedding-dim", "4"),
                "task": "embed",
            },
        },
        **extra,
    }


def client(gw) -> ollama.Client:
    return ollama.Client(host=f"http://127.0.0.1:{gw_ollama_port(gw)}")


def gw_ollama_port(gw) -> int:
    import yaml

    return int(yaml.safe_load(gw.config_path.read_text())["ollama_port"])


def last_body(gw, model: str) -> dict:
    return httpx.get(gw.model(model)["url"] + "/stats", timeout=5).json()["last"]


def test_its_own_port_answers_as_ollama_does(gateway):
    gw = gateway(config())
    base = f"http://127.0.0.1:{gw_ollama_port(gw)}"
    assert httpx.get(base + "/").text == "Ollama is running"
    assert httpx.get(base + "/api/version").json()["version"]
    assert httpx.get(gw.url + "/").status_code == 200  # the gateway's own port: its page


def test_chat_and_generate_streamed_and_not(gateway):
    gw = gateway(config())
    c = client(gw)
    reply = c.chat(
        model="chat:latest",
        messages=[{"role": "user", "content": "hi"}],
        stream=False,
        options={"num_predict": 3, "temperature": 0.2},
    )
    assert reply.message.content == "tok0 tok1 tok2 " and reply.done and reply.eval_count == 3
    sent = last_body(gw, "chat")
    assert sent["max_tokens"] == 3 and sent["temperature"] == 0.2 and sent["model"] == "chat"
    parts = list(
        c.chat(
            model="llama3.2",
            messages=[{"role": "user", "content": "hi"}],
            options={"num_predict": 4},
            stream=True,
        )
    )
    assert "".join(p.message.content for p in parts) == "tok0 tok1 tok2 tok3 "
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    generated = c.generate(model="chat", prompt="hello", options={"num_predict": 2})
    assert generated.response == "tok0 tok1 " and generated.done
    streamed = "".join(
        p.response
        for p in c.generate(model="chat", prompt="x", stream=True, options={"num_predict": 2})
    )
    assert streamed == "tok0 tok1 "
    raw = c.generate(model="chat", prompt="1 2 3", raw=True, options={"num_predict": 1})
    assert raw.response == "tok0 " and last_body(gw, "chat")["prompt"] == "1 2 3"


def test_tools_format_and_images(gateway):
    gw = gateway(config())
    c = client(gw)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    asked = [{"role": "user", "content": "weather?"}]
    first = c.chat(model="chat", messages=asked, tools=tools, stream=False)
    [call] = first.message.tool_calls or []
    assert call.function.name == "weather" and call.function.arguments == {"city": "Paris"}
    turn = [*asked, first.message, {"role": "tool", "content": "sunny", "tool_name": "weather"}]
    second = c.chat(model="chat", messages=turn, tools=tools, stream=False)
    assert second.message.content == "the tool said: sunny"
    streamed = list(c.chat(model="chat", messages=asked, tools=tools, stream=True))
    calls = [p.message.tool_calls for p in streamed if p.message.tool_calls]
    assert calls and calls[0][0].function.arguments == {"city": "Paris"}
    c.chat(model="chat", messages=asked, format="json", stream=False)
    assert last_body(gw, "chat")["response_format"] == {"type": "json_object"}
    c.chat(
        model="chat", messages=[{"role": "user", "content": "what?", "images": [PNG]}], stream=False
    )
    [_, image] = last_body(gw, "chat")["messages"][0]["content"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,")


def test_embed_and_the_older_embeddings(gateway):
    gw = gateway(config())
    c = client(gw)
    out = c.embed(model="embed", input=["a", "bb"])
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 4
    old = httpx.post(f"{gw.url}/api/embeddings", json={"model": "embed", "prompt": "a"})
    assert len(old.json()["embedding"]) == 4


def test_list_ps_show_and_keep_alive(gateway):
    gw = gateway(config())
    c = client(gw)
    assert {m.model for m in c.list().models} == {"chat:latest", "embed:latest"}
    assert c.ps().models == []
    c.chat(model="chat", messages=[{"role": "user", "content": "hi"}], stream=False, keep_alive=-1)
    [running] = c.ps().models
    assert running.model == "chat:latest" and running.expires_at is not None
    assert gw.model("chat")["ttl_s"] == 0  # kept: never stopped for idleness
    shown = c.show("chat")
    assert "completion" in (shown.capabilities or [])
    c.chat(model="chat", messages=[{"role": "user", "content": "hi"}], stream=False, keep_alive=0)
    assert wait_until(lambda: gw.model("chat")["state"] == "stopped", 5)
    loaded = c.generate(model="chat", prompt="", keep_alive="5m")  # only loads it
    assert loaded.done_reason == "load" and gw.model("chat")["state"] == "ready"
    assert gw.model("chat")["ttl_s"] == 300
    c.generate(model="chat", prompt="", keep_alive=0)
    assert gw.model("chat")["state"] == "stopped"


def test_errors_come_as_ollama_sends_them(gateway):
    gw = gateway(config(auth={"api_keys": ["k"], "admin_keys": ["admin"]}), key="admin")
    c = client(gw)
    with pytest.raises(ollama.ResponseError) as missing:
        ollama.Client(
            host=f"http://127.0.0.1:{gw_ollama_port(gw)}", headers={"Authorization": "Bearer k"}
        ).chat(model="nope", messages=[{"role": "user", "content": "x"}], stream=False)
    assert missing.value.status_code == 404 and "not configured" in missing.value.error
    with pytest.raises(ollama.ResponseError) as unauthorized:
        c.list()
    assert unauthorized.value.status_code == 401
    refused = httpx.request(
        "DELETE",
        f"{gw.url}/api/delete",
        json={"model": "chat"},
        headers={"Authorization": "Bearer k"},
    )
    assert refused.status_code == 403 and "error" in refused.json()
    bad = httpx.post(f"{gw.url}/api/chat", content=b"{", headers={"Authorization": "Bearer k"})
    assert bad.status_code == 400 and set(bad.json()) == {"error"}


def test_pull_from_the_hub_then_chat_with_it(gateway, hub, tmp_path, monkeypatch):
    models_dir = tmp_path / "models"
    monkeypatch.setenv("VRAMGATE_ENGINES__LLAMACPP__BINARY", stand_in(tmp_path))
    repo = hub.repo("acme/tiny-GGUF", {"README.md": "# tiny\n"})
    make_gguf(repo / "tiny-Q4_K_M.gguf")
    make_gguf(repo / "tiny-Q8_0.gguf")
    gw = gateway(config(models_dir=str(models_dir), allow_adhoc=True))
    c = client(gw)
    lines = list(c.pull("hf.co/acme/tiny-GGUF:Q4_K_M", stream=True))
    assert lines[0].status == "pulling manifest" and lines[-1].status == "success"
    assert any(line.total and line.completed == line.total for line in lines)
    pulled = (models_dir / "acme" / "tiny-GGUF").glob("*.gguf")
    assert [p.name for p in pulled] == ["tiny-Q4_K_M.gguf"]  # that quantization only
    reply = c.chat(
        model="hf.co/acme/tiny-GGUF:Q4_K_M",
        messages=[{"role": "user", "content": "hi"}],
        stream=False,
    )
    assert reply.message.content.startswith("tok0")
    assert "acme/tiny-GGUF/tiny-Q4_K_M:latest" in {m.model for m in c.list().models}
    with pytest.raises(ollama.ResponseError) as not_hub:
        c.pull("llama3.2", stream=False)
    assert "not a Hugging Face repository" in not_hub.value.error
    c.delete("acme/tiny-GGUF/tiny-Q4_K_M")
    assert not (models_dir / "acme" / "tiny-GGUF" / "tiny-Q4_K_M.gguf").exists()
