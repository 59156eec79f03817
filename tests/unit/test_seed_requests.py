"""Seed 003's request fields: which engine and settings they choose, and which instance."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_estimate import make_gguf
from vramgate import inventory
from vramgate.errors import BadRequest
from vramgate.inventory import adhoc_model, find, instance_name, seed_options


def folder(root: Path) -> Path:
    """One model two ways, as a seed 003 user keeps it: a GGUF and its safetensors folder."""
    model = root / "smollm2"
    model.mkdir(parents=True)
    (model / "smollm2-Q4_1.gguf").write_bytes(b"GGUF")
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    return model


def test_seed_fields_become_settings_for_the_chosen_engine_only():
    llama = seed_options({"backend": "llamacpp", "device": "cuda", "n_gpu_layers": -1,
                          "n_ctx": 2048, "max_model_len": 9, "gpu_memory_utilization": 0.7,
                          "ttl": 300})  # fmt: skip
    assert llama == {"engine": "llamacpp", "device": "cuda", "n_gpu_layers": -1,
                     "context_length": 2048, "gpu_memory_utilization": 0.7, "ttl": 300}  # fmt: skip
    vllm = seed_options({"backend": "vllm", "n_ctx": 2048, "max_model_len": 32000})
    assert vllm == {"engine": "vllm", "context_length": 32000}
    assert seed_options({"backend": "transformers", "n_ctx": 2048}) == {"engine": "transformers"}
    assert seed_options({"backend": "llama.cpp"})["engine"] == "llamacpp"
    with pytest.raises(BadRequest, match="unknown `backend` 'tgi'"):
        seed_options({"backend": "tgi"})


def test_settings_reach_the_engine_command_line(tmp_path):
    model = folder(tmp_path)
    gguf = find(tmp_path, str(model), "llamacpp")
    assert gguf is not None and gguf.format == "gguf"
    options = seed_options({"backend": "llamacpp", "n_gpu_layers": -1, "n_ctx": 2048})
    config = adhoc_model(gguf, tmp_path, options)
    assert config.args == ["-c", "2048", "-ngl", str(inventory.ALL_LAYERS)]
    st = find(tmp_path, str(model), "vllm")
    assert st is not None and st.format == "safetensors"
    config = adhoc_model(st, tmp_path, seed_options({"backend": "vllm",
                                                     "gpu_memory_utilization": 0.5}))  # fmt: skip
    assert config.args == ["--gpu-memory-utilization", "0.5"]
    config = adhoc_model(st, tmp_path, seed_options({"backend": "transformers", "device": "cpu"}))
    assert (config.engine, config.device, config.args) == ("transformers", "cpu", [])
    with pytest.raises(BadRequest, match="device"):
        adhoc_model(st, tmp_path, {"engine": "transformers", "device": "tpu"})


def test_a_folder_or_absolute_path_inside_models_dir_names_its_model(tmp_path):
    model = folder(tmp_path)
    by_absolute = find(tmp_path, str(model), "transformers")
    assert by_absolute is not None and by_absolute.path == model
    assert find(tmp_path, "smollm2") == by_absolute  # no engine: the folder's own model
    assert find(tmp_path, f"{model}/smollm2-Q4_1.gguf") is not None
    with pytest.raises(BadRequest, match="must be inside models_dir"):
        find(tmp_path / "smollm2", str(tmp_path / "elsewhere"))


def test_exclusive_mode_names_one_instance_per_engine_and_device(tmp_path):
    model = folder(tmp_path)
    entry = find(tmp_path, str(model), "transformers")
    assert entry is not None
    assert instance_name(entry, {}) == "smollm2"  # its name in models_dir, not the path asked
    assert instance_name(entry, {"ttl": 5}) == "smollm2"
    cpu = instance_name(entry, {"engine": "transformers", "device": "cpu"})
    gpu = instance_name(entry, {"engine": "transformers", "device": "cuda"})
    assert cpu == "smollm2@transformers-cpu" and gpu == "smollm2@transformers-cuda"
    assert instance_name(entry, {"device": "cpu"}) == "smollm2@vllm-cpu"
    # No device asked: the definition's default, auto, and its name say the same.
    assert instance_name(entry, {"engine": "transformers"}) == "smollm2@transformers-auto"


def test_every_spelling_of_one_path_is_one_model(tmp_path):
    """Reproduced: `tiny`, `./tiny`, `.//tiny` and an absolute path with `./` in it each became
    a model of their own (and each could run an engine of the same file)."""
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    spellings = ["tiny", "./tiny", ".//tiny", "tiny.gguf", f"{tmp_path}/./tiny.gguf"]
    names = {instance_name(e, {}) for s in spellings if (e := find(tmp_path, s)) is not None}
    assert names == {"tiny"}


def test_a_symlink_leading_out_is_refused_by_find_itself_by_any_name(tmp_path):
    """find's own check (the later one in adhoc_model would otherwise hide its absence)."""
    root = tmp_path / "models"
    root.mkdir()
    (tmp_path / "elsewhere.gguf").write_bytes(b"GGUF")
    (root / "linked.gguf").symlink_to(tmp_path / "elsewhere.gguf")
    for label in ("linked", "linked.gguf", f"{root}/linked.gguf"):
        with pytest.raises(BadRequest, match="models_dir"):
            find(root, label)


@pytest.mark.parametrize(
    "options",
    [
        {"n_gpu_layers": "all"},
        {"n_gpu_layers": [1]},
        {"engine": ["llamacpp"]},
        {"engine": {"kind": "vllm"}},
        {"context_length": 1e400},
        {"gpu_memory_utilization": "lots"},
        {"ttl": None, "device": 3},
    ],
)
def test_mistyped_adhoc_settings_are_a_400_naming_the_field(options):
    """Reproduced: a non-integer n_gpu_layers, or a list or object as engine, was a 500."""
    with pytest.raises(BadRequest, match="ad-hoc model settings"):
        inventory.check_options(options)


def test_a_nul_in_a_name_is_a_400(tmp_path):
    with pytest.raises(BadRequest, match="NUL"):
        find(tmp_path, "tiny\0.gguf")


def test_the_estimate_cache_keeps_a_bounded_number_of_files(tmp_path):
    """Reproduced: the inventory's estimate cache kept an entry for every file it ever saw."""
    gguf = make_gguf(tmp_path / "base.gguf").read_bytes()
    inventory._estimate.cache_clear()
    for i in range(inventory.ESTIMATES_KEPT + 40):
        (tmp_path / f"m{i}.gguf").write_bytes(gguf)
        entry = find(tmp_path, f"m{i}")
        assert entry is not None and inventory.estimate(entry) is not None
    assert inventory._estimate.cache_info().currsize == inventory.ESTIMATES_KEPT
