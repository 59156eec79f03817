"""The learned-footprint store: atomic writes, max of recent loads, corrupt files set aside."""

from __future__ import annotations

import json

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
