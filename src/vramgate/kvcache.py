"""KV caches kept across swaps (llama-server): before an engine stops, the prompt caches of its
slots are saved under state_dir/kv/<footprint key>/; when the model starts again, they are restored
before it serves, so a long prompt asked before the swap is not evaluated again.

Files are keyed by the model's footprint key (engine, file, args, the file's size and mtime), so
a changed model, a file replaced at the same path or changed arguments never restore a stale
cache. The folders share a disk budget: the least recently used
go first. A save or restore that fails is logged and ignored: it costs a prefill, nothing else.
llama-server's slot API (`--slot-save-path DIR`, `POST /slots/{id}?action=save|restore` with a
bare file name) is in tools/server/README.md; `GET /slots` lists the slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Awaitable, Mapping
from pathlib import Path

import aiohttp
import orjson

from vramgate.filenames import file_stem

Headers = Mapping[str, str] | None  # an engine's own (its key, on another node)

log = logging.getLogger("vramgate.kv")
SLOT_FILE = re.compile(r"^slot-(\d+)\.bin$")
CALL_TIMEOUT_S = 30.0  # one slot's save or restore: a full 128k-token cache is a few GB of disk


class KvStore:
    def __init__(self, root: Path, budget_mib: int) -> None:
        self.root = root
        self.budget_bytes = budget_mib << 20
        # Saves of two engines end at once (two stops for one start): their trims, each in a
        # thread of its own, removed folders the other was reading (FileNotFoundError, and
        # "kv cache save failed" logged for slots already written). One trim at a time.
        self._trimming = threading.Lock()

    def path(self, key: str) -> Path:
        """Where `key`'s slots are saved (it may not exist yet)."""
        # One plain component, never `..`, never too long: keys hold model names.
        return self.root / file_stem(key)

    def folder(self, key: str) -> Path:
        """`path(key)`, made: the engine is started with it as --slot-save-path."""
        folder = self.path(key)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    async def save(
        self, http: aiohttp.ClientSession, base_url: str, key: str, headers: Headers = None
    ) -> int:
        """Saves every slot holding tokens; returns how many. Each slot's file replaces the
        one saved before (same name); an empty slot's goes. The disk is touched only off the
        event loop (a write here once stalled 0.3 s)."""
        folder = await asyncio.to_thread(self.folder, key)  # trimmed meanwhile?
        timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
        async with http.get(f"{base_url}/slots", timeout=timeout, headers=headers) as resp:
            resp.raise_for_status()
            slots = [int(s["id"]) for s in await resp.json()]
        empty: list[Path] = []
        for slot in slots:
            name = f"slot-{slot}.bin"
            url = f"{base_url}/slots/{slot}?action=save"
            body = {"filename": name}
            async with http.post(url, json=body, timeout=timeout, headers=headers) as resp:
                resp.raise_for_status()
                result = await resp.json()
            if int(result.get("n_saved", 0)) <= 0:  # an empty slot: nothing worth a file
                empty.append(folder / name)
        await asyncio.to_thread(self.after_save, folder, empty)
        return len(slots) - len(empty)

    def after_save(self, folder: Path, empty: list[Path]) -> None:
        """A save's end (in a thread): its empty slots' files go, its folder is the most
        recently used, and the folders are trimmed to the budget."""
        with self._trimming:
            for path in empty:
                path.unlink(missing_ok=True)
            # Never `touch()` a folder a trim removed: it would come back as a plain file.
            with contextlib.suppress(FileNotFoundError):
                os.utime(folder)  # used: last to go
            self._trim()

    async def restore(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        key: str,
        headers: Headers = None,
        tokens: list[int] | None = None,
    ) -> int:
        """Restores the saved slots of `key` into the same slot ids; returns how many. Each
        slot's tokens, as llama-server counts what it read back, go into `tokens`."""
        folder = self.path(key)

        def saved() -> list[Path]:  # off the event loop, as every disk access here
            found = sorted(folder.glob("slot-*.bin"))
            if found:
                folder.touch()  # used: last to go
            return found

        restored = 0
        timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
        for path in await asyncio.to_thread(saved):
            match = SLOT_FILE.match(path.name)
            if match is None:
                continue
            url = f"{base_url}/slots/{match[1]}?action=restore"
            body = {"filename": path.name}
            async with http.post(url, json=body, timeout=timeout, headers=headers) as resp:
                if resp.status == 200:
                    restored += 1
                    if tokens is not None:
                        with contextlib.suppress(Exception):  # no count given: unknown
                            tokens.append(int((await resp.json())["n_restored"]))
                else:
                    log.warning("restoring %s failed: %s", path, (await resp.text())[:200])
        return restored

    def trim(self) -> None:
        """Removes the least recently used folders until the rest fit the disk budget."""
        with self._trimming:
            self._trim()

    def _trim(self) -> None:
        # Files still come and go meanwhile (an engine writing its slots, a restore's folder
        # made): whatever vanished between the listing and its stat counts as gone.
        stats: dict[Path, tuple[float, int]] = {}
        for folder in self.root.iterdir() if self.root.exists() else ():
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                if folder.is_dir():
                    stats[folder] = (folder.stat().st_mtime, _size(folder))
        total = sum(size for _, size in stats.values())
        for folder, (_, size) in sorted(stats.items(), key=lambda item: item[1][0]):
            if total <= self.budget_bytes:
                break
            total -= size
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)
            log.info("kv cache of %s removed (disk budget %d MiB)", folder.name,
                     self.budget_bytes >> 20)  # fmt: skip


def _size(folder: Path) -> int:
    """The bytes of the files in `folder`, counting none that vanish while it is read."""
    total = 0
    for path in folder.glob("*"):
        with contextlib.suppress(FileNotFoundError):
            if path.is_file():
                total += path.stat().st_size
    return total


def reuse_of(content: bytes) -> tuple[int, int] | None:
    """llama-server's own account of a (non-streamed) answer's prompt: (tokens taken from its
    cache, tokens evaluated), from `timings`; None where the answer has none."""
    try:
        timings = orjson.loads(content).get("timings")
        return int(timings["cache_n"]), int(timings["prompt_n"])
    except Exception:
        return None


def reuse_event(name: str, restored: int, cache_n: int, prompt_n: int) -> tuple[str, bool]:
    """What the first answer after a restore says of it: (message, reused)."""
    if cache_n > 0:
        return (
            f"model '{name}': its restored KV cache was used: {cache_n} prompt tokens from it, "
            f"{prompt_n} evaluated",
            True,
        )
    return (
        f"model '{name}': its restored KV cache ({restored} tokens) was not used by the first "
        f"answer after the start (cache_n 0, {prompt_n} tokens evaluated): this prompt shares "
        "no prefix with the saved ones, or llama-server ignores restored slots (a sliding-window "
        "model without --swa-full, some builds)",
        False,
    )


async def quietly(what: str, name: str, call: Awaitable[int]) -> int:
    """Runs a save or restore, logging (not raising) what goes wrong: a kept cache is a bonus."""
    began = time.monotonic()
    try:
        count = await call
    except Exception as exc:
        log.warning("model '%s': kv cache %s failed (%r); it goes on without", name, what, exc)
        return 0
    if count:
        took = (time.monotonic() - began) * 1000
        log.info("model '%s': kv cache %s: %d slot(s) in %.0f ms", name, what, count, took)
    return count
