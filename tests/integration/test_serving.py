"""Serving through the gateway: starts on demand, relaying, streams, single flight, disconnects."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.conftest import fake_cmd, pid_alive, wait_until


def one_model(*knobs: str, **extra) -> dict:
    return {"models": {"fake": {"engine": "command", "cmd": fake_cmd(*knobs), **extra}}}


def test_chat_completion_starts_engine_on_demand(gateway):
    """The first request starts the engine; the answer comes back through the openai client."""
    gw = gateway(one_model())
    assert gw.model("fake")["state"] == "stopped"
    reply = gw.client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert reply.choices[0].message.content == "tok0 tok1 tok2 "
    status = gw.model("fake")
    assert status["state"] == "ready"
    assert status["starts"] == 1
    assert pid_alive(status["pid"])


def test_alias_is_rewritten_to_the_name_the_engine_expects(gateway):
    """A request naming an alias reaches the engine with the model's upstream name."""
    gw = gateway(one_model(aliases=["f1", "other"], upstream_model="served-name"))
    reply = gw.client.chat.completions.create(model="other", messages=[], max_tokens=1)
    assert reply.model == "served-name"


def test_stream_is_relayed_chunk_by_chunk(gateway):
    """Streamed tokens reach the client as the engine makes them, not all at the end."""
    gw = gateway(one_model("--tokens-per-s", "20"))
    gw.client.models.list()
    gw.http.post("/admin/models/fake/load")
    arrivals = []
    text = ""
    stream = gw.client.chat.completions.create(
        model="fake", messages=[], max_tokens=10, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            text += chunk.choices[0].delta.content
    assert text == "".join(f"tok{i} " for i in range(10))
    # At 20 tokens/s, ten tokens take about 0.5 s; buffered whole they would arrive together.
    assert arrivals[-1] - arrivals[0] > 0.3


def test_completions_embeddings_rerank_and_responses(gateway):
    """Every OpenAI route is relayed to the engine."""
    gw = gateway(one_model())
    done = gw.client.completions.create(model="fake", prompt="x", max_tokens=2)
    assert done.choices[0].text == "tok0 tok1 "
    emb = gw.client.embeddings.create(model="fake", input=["a", "bb"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    rr = gw.http.post(
        "/v1/rerank", json={"model": "fake", "query": "cat", "documents": ["dog", "cat"]}
    )
    assert rr.status_code == 200 and rr.json()["results"][0]["index"] == 1
    resp = gw.http.post("/v1/responses", json={"model": "fake", "input": "hi", "max_tokens": 1})
    assert resp.status_code == 200


def test_burst_on_cold_model_starts_once(gateway):
    """Fifty concurrent requests for a stopped model cause one start, and all are served."""
    gw = gateway(one_model("--load-delay", "1.0"))

    async def burst():
        calls = [
            gw.aclient.chat.completions.create(model="fake", messages=[], max_tokens=2)
            for _ in range(50)
        ]
        return await asyncio.gather(*calls)

    replies = asyncio.run(burst())
    assert all(r.choices[0].message.content == "tok0 tok1 " for r in replies)
    status = gw.model("fake")
    assert status["starts"] == 1
    assert status["requests"] == 50
    assert gw.engine_log("fake").count("loading (delay") == 1


def test_client_disconnect_cancels_upstream_stream(gateway):
    """A client that leaves mid-stream aborts the engine's generation at once."""
    gw = gateway(one_model("--tokens-per-s", "5"))
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json={"model": "fake", "messages": [], "max_tokens": 100, "stream": True},
        timeout=30,
    ) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                break
    port = gw.model("fake")["port"]

    def cancelled() -> bool:
        return httpx.get(f"http://127.0.0.1:{port}/stats").json()["cancelled"] == 1

    assert wait_until(cancelled, timeout_s=5)
    assert wait_until(lambda: gw.model("fake")["in_flight"] == 0, timeout_s=5)


def test_client_disconnect_cancels_upstream_request(gateway):
    """A client that leaves before a non-streamed answer also aborts the upstream request."""
    gw = gateway(one_model("--latency-ms", "3000"))
    gw.http.post("/admin/models/fake/load")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gw.url + "/v1/chat/completions", json={"model": "fake", "messages": []}, timeout=0.5
        )
    port = gw.model("fake")["port"]

    def cancelled() -> bool:
        return httpx.get(f"http://127.0.0.1:{port}/stats").json()["cancelled"] == 1

    assert wait_until(cancelled, timeout_s=2.5)


def test_max_concurrency_full_queue_gets_429_with_retry_after(gateway):
    """Beyond max_concurrency plus max_queue, requests are refused with 429 and Retry-After."""
    gw = gateway(one_model("--latency-ms", "800", max_concurrency=1, max_queue=1))
    gw.http.post("/admin/models/fake/load")

    async def three():
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            body = {"model": "fake", "messages": [], "max_tokens": 1}
            first = asyncio.create_task(http.post("/v1/chat/completions", json=body))
            await asyncio.sleep(0.2)
            second = asyncio.create_task(http.post("/v1/chat/completions", json=body))
            await asyncio.sleep(0.2)
            third = await http.post("/v1/chat/completions", json=body)
            return await first, await second, third

    first, second, third = asyncio.run(three())
    assert first.status_code == 200 and second.status_code == 200
    assert third.status_code == 429
    assert third.headers["retry-after"] == "1"
    assert third.json()["error"]["code"] == "queue_full"


def test_openai_client_sees_queue_full_as_rate_limit(gateway):
    """The openai client maps our 429 to its RateLimitError."""
    gw = gateway(one_model("--latency-ms", "1500", max_concurrency=1, max_queue=0))
    gw.http.post("/admin/models/fake/load")

    async def two():
        slow = asyncio.create_task(
            gw.aclient.chat.completions.create(model="fake", messages=[], max_tokens=1)
        )
        await asyncio.sleep(0.3)
        with pytest.raises(openai.RateLimitError):
            await gw.aclient.chat.completions.create(model="fake", messages=[], max_tokens=1)
        await slow

    asyncio.run(two())
