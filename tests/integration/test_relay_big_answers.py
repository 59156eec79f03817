"""Big non-streamed answers through a real gateway: relayed whole, without a stall."""

from __future__ import annotations

from tests.conftest import fake_cmd


def test_a_batch_of_big_embeddings_comes_back_whole(gateway):
    """Reproduced: an answer over 1 MiB (8 embeddings of 40000 floats, about 4 MiB) waited for
    read_timeout about half the time, then failed with 502: the relay's client paused reading
    at 1 MiB before the answer was first awaited, and nothing resumed it."""
    model = {"engine": "command", "cmd": fake_cmd("--embedding-dim", "40000")}
    gw = gateway({"defaults": {"read_timeout": 5}, "models": {"e": model}})
    for _ in range(4):
        resp = gw.http.post("/v1/embeddings", json={"model": "e", "input": ["x"] * 8})
        assert resp.status_code == 200, resp.text[:300]
        assert len(resp.content) > 1 << 20
        data = resp.json()["data"]
        assert len(data) == 8 and all(len(d["embedding"]) == 40000 for d in data)
