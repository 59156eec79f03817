"""Kept KV caches: the disk budget, keys that change with the model, the larger SWA estimate."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from vramgate.config import ModelConfig
from vramgate.gpu.footprints import footprint_key
from vramgate.kvcache import KvStore, reuse_event, reuse_of


def fill(store: KvStore, key: str, mib: int, mtime: float) -> Path:
    folder = store.folder(key)
    (folder / "slot-0.bin").write_bytes(b"\0" * (mib << 20))
    os.utime(folder, (mtime, mtime))
    return folder


def test_the_least_recently_used_caches_go_beyond_the_disk_budget(tmp_path):
    store = KvStore(tmp_path, budget_mib=5)
    old = fill(store, "a@1", 2, 1000)
    middle = fill(store, "b@2", 2, 2000)
    new = fill(store, "c@3", 2, 3000)
    store.trim()
    assert not old.exists() and middle.exists() and new.exists()
    store.budget_bytes = 0
    store.trim()
    assert not any(tmp_path.iterdir())


def test_folder_names_are_safe_whatever_the_model_name(tmp_path):
    for key in ("../../etc/x@abc", "..", "a/b@1"):
        folder = KvStore(tmp_path, 1).folder(key)
        assert folder.parent == tmp_path and not folder.name.startswith(".")


def test_keeping_kv_or_changing_args_changes_the_key():
    base = ModelConfig(engine="llamacpp", source="/m.gguf", args=["-c", "2048"])
    kept = base.model_copy(update={"keep_kv": True})
    other = kept.model_copy(update={"args": ["-c", "4096"]})
    keys = {footprint_key("g", m) for m in (base, kept, other)}
    assert len(keys) == 3


def test_the_first_answer_after_a_restore_says_whether_it_was_used():
    """llama-server's `timings` (cache_n: tokens from its cache, prompt_n: evaluated) tell a
    restore that was used from one that was not; answers without them say nothing."""

    used = b'{"choices": [], "timings": {"cache_n": 1100, "prompt_n": 1}}'
    assert reuse_of(used) == (1100, 1)
    assert reuse_of(b'{"data": [{"embedding": [0.1]}]}') is None
    assert reuse_of(b"not json") is None
    message, reused = reuse_event("m", 1101, 1100, 1)
    assert reused and "1100 prompt tokens from it" in message
    message, reused = reuse_event("m", 1101, 0, 1101)
    assert not reused and "(1101 tokens) was not used" in message and "--swa-full" in message


def test_concurrent_trims_never_fail_on_a_folder_another_trim_removed(tmp_path):
    """Two engines saving at once trim together: a folder (or file) one trim removes while the
    other reads it is skipped, not a FileNotFoundError (issue 24, 15: a save logged as failed
    though its slots were written)."""
    store = KvStore(tmp_path, budget_mib=0)
    errors: list[BaseException] = []

    def saver(k: int) -> None:
        for round_ in range(40):
            try:  # the engine's own writes, into a folder another trim may remove meanwhile
                folder = store.folder(f"m{k}@{round_}")
                for slot in range(4):
                    (folder / f"slot-{slot}.bin").write_bytes(b"\0" * 4096)
            except OSError:
                continue
            try:
                store.after_save(folder, [folder / "slot-3.bin"])
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=saver, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]
    assert all(f.is_dir() for f in tmp_path.iterdir())  # no folder came back as a file
