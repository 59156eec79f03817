"""The learned-footprint store: atomic writes, max of recent loads, corrupt files set aside."""

from __future__ import annotations

import json
import os
import time

from vramgate.config import ModelConfig
from vramgate.gpu.footprints import KEPT_LOADS, FootprintStore, footprint_key


def test_footprints_survive_a_restart(tmp_path):
    path = tmp_path / "footprints.json"
    FootprintStore(path).record("m@1", 4000, new_load=True)
    assert FootprintStore(path).get_mib("m@1") == 4000
    assert not list(tmp_path.glob(".*.tmp"))


def test_max_of_recent_loads(tmp_path):
    store = FootprintStore(tmp_path / "f.json")
    store.record("m", 4000, new_load=True)
    store.record("m", 4500, new_load=False)  # grew after its first requests
    store.record("m", 4200, new_load=False)  # smaller: ignored
    store.record("m", 3000, new_load=True)
    assert store.entries["m"]["loads_mib"] == [4500, 3000]
    assert store.get_mib("m") == 4500
    for _ in range(KEPT_LOADS):
        store.record("m", 1000, new_load=True)
    assert store.get_mib("m") == 1000


def test_corrupt_file_is_set_aside_not_fatal(tmp_path):
    path = tmp_path / "footprints.json"
    path.write_text("{not json")
    store = FootprintStore(path)
    assert store.entries == {}
    aside = list(tmp_path.glob("footprints.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{not json"
    store.record("m", 10, new_load=True)
    assert json.loads(path.read_text())["m"]["loads_mib"] == [10]


def test_full_disk_keeps_footprints_in_memory(tmp_path):
    (tmp_path / ".footprints.json.tmp").symlink_to("/dev/full")
    store = FootprintStore(tmp_path / "footprints.json")
    store.record("m", 10, new_load=True)  # ENOSPC: reported, not raised
    assert store.get_mib("m") == 10
    assert not (tmp_path / "footprints.json").exists()


def test_key_changes_with_what_changes_memory():
    base = ModelConfig(engine="llamacpp", source="/m.gguf")
    other_ctx = ModelConfig(engine="llamacpp", source="/m.gguf", args=["-c", "8192"])
    same = ModelConfig(engine="llamacpp", source="/m.gguf", ttl=5)
    assert footprint_key("g", base) != footprint_key("g", other_ctx)
    assert footprint_key("g", base) == footprint_key("g", same)
    assert footprint_key("g", base).startswith("g@")


def test_a_file_replaced_at_the_same_path_is_learned_anew(tmp_path):
    """Another file at the same path (size, or only mtime, differs): another key, so neither
    its footprint nor its kept KV caches (kvcache keys by it) are those of the old file."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 100)
    model = ModelConfig(engine="llamacpp", source=str(gguf))
    before = footprint_key("g", model)
    assert footprint_key("g", model) == before  # unchanged file: same key
    gguf.write_bytes(b"GGUF" + b"\0" * 200)  # a bigger quantization downloaded over it
    bigger = footprint_key("g", model)
    assert bigger != before
    os.utime(gguf, ns=(1, 1))  # same size, other contents: its mtime tells
    assert footprint_key("g", model) not in (before, bigger)
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    st = ModelConfig(engine="vllm", source=str(folder))
    first = footprint_key("s", st)
    (folder / "model.safetensors").write_bytes(b"x" * 20)
    assert footprint_key("s", st) != first
    hub = ModelConfig(engine="vllm", source="Org/Model")  # not a local path: as before
    assert footprint_key("h", hub) == footprint_key("h", hub.model_copy())


def test_an_older_footprints_file_is_read_where_it_measured_this_file(tmp_path):
    """Keys before the file's identity: an entry measured after the file was last written
    is taken over (GPU and host RAM); one older than the file is not used."""
    from vramgate.gpu.footprints import _key

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    model = ModelConfig(engine="llamacpp", source=str(gguf))
    legacy = _key("g", model, "")
    path = tmp_path / "footprints.json"
    path.write_text(json.dumps({
        legacy: {"loads_mib": [4000], "updated": time.time() + 60},
        legacy + "#host": {"loads_mib": [700], "updated": time.time() + 60},
    }))  # fmt: skip
    store = FootprintStore(path)
    store.adopt_legacy("g", model, ("", "#host"))
    assert store.get_mib(footprint_key("g", model)) == 4000
    assert store.get_mib(footprint_key("g", model) + "#host") == 700
    assert FootprintStore(path).get_mib(footprint_key("g", model)) == 4000  # saved so
    path.write_text(json.dumps({legacy: {"loads_mib": [4000], "updated": 1.0}}))
    stale = FootprintStore(path)
    stale.adopt_legacy("g", model, ("", "#host"))
    assert stale.get_mib(footprint_key("g", model)) is None
