"""vramgate.client (sync and async) against a live gateway."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import FAKE_RAM, fake_cmd
from vramgate.client import AsyncGateway, Gateway, GatewayAPIError

ADMIN = "k-admin-client"


@pytest.fixture
def gw(gateway, hub, tmp_path):
    hub.repo("acme/tiny", {"config.json": "{}", "README.md": "hi"})
    fake = {"engine": "command", "cmd": fake_cmd(), **FAKE_RAM}
    config = {
        "auth": {"admin_keys": [ADMIN]},
        "models_dir": str(tmp_path / "models"),
        "models": {"a": fake, "b": fake | {"ttl": 60}},
    }
    return gateway(config, key=ADMIN)


def test_sync_client_covers_the_admin_and_download_routes(gw):
    with Gateway(gw.url, api_key=ADMIN) as client:
        assert client.models() == ["a", "b"]
        assert client.load("b").state == "ready"
        assert client.chat("a", "Hello", max_tokens=3) == "tok0 tok1 tok2 "
        assert "".join(client.chat_stream("a", "Hello", max_tokens=3)) == "tok0 tok1 tok2 "
        assert sorted(m.id for m in client.loaded()) == ["a", "b"]
        b = next(m for m in client.loaded() if m.id == "b")
        assert b.expires_at is not None and b.pid
        stats = {s.id: s for s in client.stats()}
        assert stats["a"].needed_start == 1 and stats["a"].served_warm == 1
        assert client.status().models[0].name == "a"
        assert any("ready on port" in line for line in client.logs("a", tail=20))
        assert client.unload("a") == "stopped"
        assert client.unload_all() == ["b"]
        assert client.reload().kept == ["a", "b"]

        check = client.verify_repo("acme/tiny")
        assert check.exists and check.bytes_total == 4
        job = client.wait_download(client.download("acme/tiny", include=["*.json"]).id, 30)
        assert job.state == "done" and [f.path for f in job.files] == ["config.json"]
        assert [j.id for j in client.downloads()] == [job.id]
        assert client.inventory() == []  # a config.json alone is no model

        with pytest.raises(GatewayAPIError) as missing:
            client.load("zz")
        assert missing.value.status == 404 and missing.value.code == "model_not_found"
    with Gateway(gw.url, api_key="wrong") as stranger, pytest.raises(GatewayAPIError) as denied:
        stranger.status()
    assert denied.value.status == 401


def test_async_client(gw):
    async def run() -> tuple[str, list[str], str]:
        async with AsyncGateway(gw.url, api_key=ADMIN) as client:
            answer = await client.chat("a", [{"role": "user", "content": "Hi"}], max_tokens=2)
            pieces = [p async for p in client.chat_stream("b", "Hi", max_tokens=2)]
            state = await client.unload("a")
            return answer, pieces, state

    answer, pieces, state = asyncio.run(run())
    assert (answer, "".join(pieces), state) == ("tok0 tok1 ", "tok0 tok1 ", "stopped")


def test_events_iterate_as_they_happen(gw):
    import threading

    with Gateway(gw.url, api_key=ADMIN) as client:
        threading.Timer(0.3, lambda: Gateway(gw.url, api_key=ADMIN).load("a")).start()
        states = []
        for event in client.events():
            if event["kind"] == "state":
                states.append(event["state"])
            if states[-1:] == ["ready"]:
                break
    assert states == ["starting", "ready"]
