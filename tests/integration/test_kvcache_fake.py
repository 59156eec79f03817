"""KvStore's save and restore against the fake engine's slot API (llama-server's): a prompt
cached before a stop is found again after the restore, and an empty slot writes no file."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import httpx

from tests.conftest import free_port, wait_until
from vramgate.kvcache import KvStore

PROMPT = "the same long prompt " * 20


def engine(folder: Path, *knobs: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = [sys.executable, "-m", "vramgate.testing.fake_engine", "--port", str(port)]
    proc = subprocess.Popen([*argv, "--slot-save-path", str(folder), *knobs])
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/health").status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_until(up, 15)
    return proc, url


async def ask(http: aiohttp.ClientSession, url: str) -> dict:
    body = {"model": "m", "prompt": PROMPT, "max_tokens": 1}
    async with http.post(url + "/v1/completions", json=body) as resp:
        return (await resp.json())["timings"]


def test_saved_slots_are_restored_into_the_next_engine(tmp_path):
    store = KvStore(tmp_path / "kv", budget_mib=64)
    key = "m@abc"
    folder = store.folder(key)

    async def run() -> None:
        async with aiohttp.ClientSession() as http:
            first, url = engine(folder)
            try:
                assert (await ask(http, url))["cache_n"] == 0
                assert (await ask(http, url))["cache_n"] == len(PROMPT)  # cached in slot 0
                assert await store.save(http, url, key) == 1
            finally:
                first.kill()
                first.wait()
            assert sorted(p.name for p in folder.iterdir()) == ["slot-0.bin"]  # slot 1 empty
            second, url = engine(folder)
            try:
                assert await store.restore(http, url, key) == 1
                assert (await ask(http, url))["cache_n"] == len(PROMPT)
            finally:
                second.kill()
                second.wait()
            ignoring, url = engine(folder, "--restore-ignored")
            try:
                assert await store.restore(http, url, key) == 1  # answered, yet kept nothing
                assert (await ask(http, url))["cache_n"] == 0
            finally:
                ignoring.kill()
                ignoring.wait()

    asyncio.run(run())


def test_a_key_too_long_for_a_file_name_still_has_a_folder(tmp_path):
    """Reproduced: a model name over ~240 bytes with keep_kv failed every start
    (ENAMETOOLONG); and two long names that share their first bytes stay apart."""
    store = KvStore(tmp_path, budget_mib=1)
    one, two = store.folder("m" * 300 + "@1"), store.folder("m" * 300 + "@2")
    assert one.is_dir() and two.is_dir() and one != two
    assert len(one.name.encode()) < 255
