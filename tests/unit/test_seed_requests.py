"""Seed 003's request fields: which engine and settings they choose, and which instance."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    label = str(model)
    assert instance_name(label, {}, entry) == label
    assert instance_name(label, {"ttl": 5}, entry) == label
    cpu = instance_name(label, {"engine": "transformers", "device": "cpu"}, entry)
    gpu = instance_name(label, {"engine": "transformers", "device": "cuda"}, entry)
    assert cpu == f"{label}@transformers-cpu" and gpu == f"{label}@transformers-cuda"
    assert instance_name(label, {"device": "cpu"}, entry) == f"{label}@vllm-cpu"
