"""Footprint estimates from metadata, on GGUF and safetensors files made here."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from vramgate.config import ModelConfig
from vramgate.gpu.estimate import (
    MIB,
    PROCESS_OVERHEAD_MIB,
    EstimateError,
    estimate_gguf,
    estimate_model,
    read_gguf_header,
)


def make_gguf(
    path: Path,
    *,
    arch="gemma3",
    layers=12,
    window=512,
    vocab=1000,
    chat_template=None,
    kv_heads: int | list[int] = 2,
) -> Path:
    """A small GGUF: 12 layers, 2 KV heads of 64, a 2 MiB f32 tensor, a 1 MiB f16 one."""
    w = GGUFWriter(str(path), arch)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    w.add_block_count(layers)
    w.add_embedding_length(256)
    w.add_head_count(4)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(64)
    w.add_value_length(64)
    w.add_context_length(8192)
    if window:
        w.add_sliding_window(window)
    w.add_token_list([f"t{i}" for i in range(vocab)])
    w.add_tensor("a", np.zeros((512, 1024), dtype=np.float32))
    w.add_tensor("b", np.zeros((512, 1024), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_header_is_read_without_the_weights(tmp_path):
    meta, tensor_bytes = read_gguf_header(make_gguf(tmp_path / "m.gguf", vocab=5000))
    assert sum(tensor_bytes.values()) == 3 * MIB
    assert meta["general.architecture"] == "gemma3"
    assert meta["tokenizer.ggml.tokens"] == 5000  # a long array stands for its length


def test_gguf_header_is_read_once_per_file_version(tmp_path):
    """Starts ask for the header at every swap: the same file is read once; a file written
    again (another size or mtime) is read again; long arrays of numbers are skipped too."""
    path = make_gguf(tmp_path / "m.gguf", vocab=5000)
    first = read_gguf_header(path)
    assert read_gguf_header(tmp_path / "." / "m.gguf") is first
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(3)
    w.add_array("scores", [0.5] * 6000)
    w.add_token_list([f"t{i}" for i in range(6000)])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    meta, tensor_bytes = read_gguf_header(path)
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 3
    assert meta["scores"] == 6000 and meta["tokenizer.ggml.tokens"] == 6000
    assert sum(tensor_bytes.values()) == 0


def test_gguf_estimate_with_sliding_window_layers(tmp_path):
    """gemma3: every 6th layer global; the others keep the window of each of llama-server's
    4 slots and one ubatch, padded to 256 (4 x 512 + 512, as llama-server reported for gemma 3
    270M); with -np N each slot has its own window + ubatch, with -kvu they share one."""
    path = make_gguf(tmp_path / "m.gguf")
    est = estimate_gguf(path, ["-c", "4096"])
    per_cell = 2 * (64 * 2 + 64 * 2)  # 2 KV heads, K and V of 64, f16
    global_layers, sliding_layers = 2, 10

    def kv(sliding_cells: int) -> float:
        return (global_layers * 4096 + sliding_layers * sliding_cells) * per_cell / MIB

    assert est.kv_cache_mib == kv(2560)
    # Cell counts llama-server printed for gemma 3 270M with these flags (-c 8192).
    assert estimate_gguf(path, ["-c", "4096", "-np", "1"]).kv_cache_mib == kv(1024)
    assert estimate_gguf(path, ["-c", "4096", "-np", "2"]).kv_cache_mib == kv(2048)
    assert estimate_gguf(path, ["-c", "4096", "-np", "2", "-kvu"]).kv_cache_mib == kv(1536)
    assert estimate_gguf(path, ["-c", "4096", "-np", "3", "-ub", "256"]).kv_cache_mib == kv(2304)
    assert estimate_gguf(path, ["-c", "2048"]).kv_cache_mib == 12 * 2048 * per_cell / MIB
    assert est.weights_mib == 3.0
    assert est.compute_mib == 1000 * 512 * 4 / MIB  # logits of one ubatch
    assert est.overhead_mib == PROCESS_OVERHEAD_MIB
    assert est.context == 4096
    assert est.placement_mib > est.total_mib


def test_keeping_kv_counts_the_full_sliding_window_cache(tmp_path):
    """Kept KV caches run a sliding-window model with --swa-full: every layer holds the context,
    and its estimate says so; llamacpp's kv_args add the flag only for such models."""
    from vramgate.config import ModelConfig, Settings
    from vramgate.engines import adapters
    from vramgate.gpu.estimate import estimate_model

    path = make_gguf(tmp_path / "m.gguf")
    model = ModelConfig(engine="llamacpp", source=str(path), args=["-c", "4096"], keep_kv=True)
    per_cell = 2 * (64 * 2 + 64 * 2)
    assert estimate_model(model).kv_cache_mib == 12 * 4096 * per_cell / MIB  # type: ignore[union-attr]
    llama = adapters(Settings())["llamacpp"]
    assert llama.kv_args(model, tmp_path) == ["--slot-save-path", str(tmp_path), "--swa-full"]
    flat = make_gguf(tmp_path / "flat.gguf", arch="llama", window=0)
    assert llama.kv_args(model.model_copy(update={"source": str(flat)}), tmp_path) == [
        "--slot-save-path", str(tmp_path)
    ]  # fmt: skip
    assert adapters(Settings())["vllm"].kv_args(model, tmp_path) is None


def test_kv_keeping_is_on_by_default_where_the_full_sliding_cache_costs_little(tmp_path):
    """keep_kv unset: llama-server keeps the caches of a model without sliding-window
    attention (a swap costs a few ms more), and of one that slides only while its full cache
    (--swa-full, zeroed at every start) adds at most 5% to its estimate: at its 8192
    context not (+28 MiB on ~170), at 4096 yes (+7.5 MiB); the estimate and the footprint key
    follow. keep_kv true or false decides either way; other engines keep nothing unasked."""
    from vramgate.config import ModelConfig, Settings
    from vramgate.engines import adapters
    from vramgate.gpu.footprints import footprint_key

    engines = adapters(Settings())
    flat = ModelConfig(engine="llamacpp", source=str(make_gguf(tmp_path / "f.gguf", window=0)))
    slides = ModelConfig(engine="llamacpp", source=str(make_gguf(tmp_path / "s.gguf")))
    short = slides.model_copy(update={"args": ["-c", "4096"]})
    llama = engines["llamacpp"]
    assert llama.keeps_kv(flat) and not llama.keeps_kv(slides) and llama.keeps_kv(short)
    per_cell = 2 * (64 * 2 + 64 * 2)
    assert estimate_model(short).kv_cache_mib == 12 * 4096 * per_cell / MIB  # type: ignore[union-attr]
    plain_kv = (2 * 8192 + 10 * 2560) * per_cell / MIB
    assert estimate_model(slides).kv_cache_mib == plain_kv  # type: ignore[union-attr]
    assert llama.keeps_kv(slides.model_copy(update={"keep_kv": True}))
    assert not llama.keeps_kv(short.model_copy(update={"keep_kv": False}))
    assert not llama.keeps_kv(flat.model_copy(update={"keep_kv": False}))
    assert not llama.keeps_kv(flat.model_copy(update={"source": "org/repo"}))  # not a file yet
    assert not engines["vllm"].keeps_kv(ModelConfig(engine="vllm", source="org/repo"))
    # Each keep_kv setting has its own measured footprint: unset follows the file.
    settings = (None, True, False)
    keys = {footprint_key("m", short.model_copy(update={"keep_kv": k})) for k in settings}
    assert len(keys) == 3


def test_gguf_estimate_defaults_to_the_training_context_and_honours_cache_types(tmp_path):
    path = make_gguf(tmp_path / "m.gguf", arch="llama", window=0)
    full = estimate_gguf(path, [])
    assert full.context == 8192
    assert full.kv_cache_mib == 12 * 8192 * 2 * (64 * 2 + 64 * 2) / MIB
    quantized = estimate_gguf(path, ["--ctx-size=8192", "-ctk", "q8_0", "-ctv", "q8_0"])
    assert quantized.kv_cache_mib == pytest.approx(full.kv_cache_mib * 34 / 64)


def test_real_gemma_estimate_is_near_the_h100_readings():
    """gemma 3 270M: within 10% of 882 MiB at context 2048 and 1010 MiB at 32768 (H100, NVML)."""
    import os

    gguf = os.environ.get("VRAMGATE_DEFAULT_GGUF")
    if not gguf:
        pytest.skip("needs the gemma GGUF (scripts/setup.sh)")
    for context, measured in ((2048, 882), (32768, 1010)):
        est = estimate_gguf(Path(gguf), ["-c", str(context)])
        assert abs(est.total_mib - measured) / measured < 0.10, (context, est)


def test_real_gemma_keeps_its_kv_by_default_up_to_a_5k_context():
    """gemma 3 270M slides (15 of 18 layers): its full cache adds 22 MiB (2%) at 4096, 38 MiB
    at 5120, 82 MiB (9%) at 8192 and 442 MiB at its 32768 default, where a start zeroes it for
    ~0.25 s here."""
    import os

    from vramgate.config import Settings
    from vramgate.engines import adapters

    gguf = os.environ.get("VRAMGATE_DEFAULT_GGUF")
    if not gguf:
        pytest.skip("needs the gemma GGUF (scripts/setup.sh)")
    llama = adapters(Settings())["llamacpp"]
    kept = {c: llama.keeps_kv(ModelConfig(engine="llamacpp", source=gguf, args=["-c", str(c)]))
            for c in (2048, 4096, 5120, 8192)}  # fmt: skip
    assert kept == {2048: True, 4096: True, 5120: True, 8192: False}
    assert not llama.keeps_kv(ModelConfig(engine="llamacpp", source=gguf))


def test_arguments_that_are_not_numbers_are_named_and_keep_only_what_costs_nothing(tmp_path):
    """`-c 8k`: the estimate says which argument it could not read; whether the caches are
    kept cannot be weighed, so only a model that does not slide keeps them (a start never
    fails over it: llama-server judges its own arguments)."""
    from vramgate.config import Settings
    from vramgate.engines import adapters

    slides = make_gguf(tmp_path / "s.gguf")
    with pytest.raises(EstimateError, match="-c '8k' is not a whole number"):
        estimate_gguf(slides, ["-c", "8k"])
    llama = adapters(Settings())["llamacpp"]
    flat = make_gguf(tmp_path / "f.gguf", window=0)
    assert llama.keeps_kv(ModelConfig(engine="llamacpp", source=str(flat), args=["-c", "8k"]))
    assert not llama.keeps_kv(ModelConfig(engine="llamacpp", source=str(slides), args=["-c", "8k"]))


def test_not_a_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(EstimateError, match="bad magic"):
        estimate_gguf(bad)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    header, offset = {}, 0
    sizes = {"F16": 2, "BF16": 2, "F32": 4}
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype] * int(np.prod(shape))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_safetensors_folder_estimate(tmp_path):
    write_safetensors(tmp_path / "a.safetensors", {"w": ("BF16", [1024, 512])})
    write_safetensors(tmp_path / "b.safetensors", {"v": ("F32", [256, 1024])})
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "num_hidden_layers": 4,
                "num_attention_heads": 8,
                "num_key_value_heads": 2,
                "hidden_size": 512,
                "max_position_embeddings": 1024,
            }
        )
    )
    est = estimate_model(ModelConfig(engine="vllm", source=str(tmp_path)))
    assert est is not None
    assert est.weights_mib == 2.0
    assert est.kv_cache_mib == 2 * 4 * 2 * 64 * 1024 * 2 / MIB
    assert est.context == 1024


def test_nothing_to_read_is_no_estimate():
    assert estimate_model(ModelConfig(engine="vllm", source="Org/not-local"), hub=False) is None
    assert estimate_model(ModelConfig(engine="command", cmd="s ${PORT}")) is None


def test_param_count_and_precision_when_no_file_can_be_read():
    est = estimate_model(
        ModelConfig(engine="vllm", source="Org/Remote-8B", param_count=8, precision="fp8"),
        hub=False,
    )
    assert est is not None and est.basis == "8B parameters at fp8"
    assert est.weights_mib == pytest.approx(8e9 / MIB)
    assert est.kv_cache_mib == pytest.approx(0.2 * 8e9 / MIB)


def test_partial_offload_puts_its_last_layers_on_the_gpu_and_the_rest_in_host_ram(tmp_path):
    """-ngl 3 of 12 layers (llama.cpp offloads the last N): the GPU holds their weights and
    KV cache, the compute buffer and the process overhead; host RAM the other 9 layers' and
    every tensor outside the layers (this file's two: none of the GPU's weights)."""
    path = make_gguf(tmp_path / "m.gguf", arch="llama", window=0)
    whole = estimate_gguf(path, ["-c", "4096"])
    part = estimate_gguf(path, ["-c", "4096", "-ngl", "3"])
    assert part.weights_mib == 0
    assert part.kv_cache_mib == whole.kv_cache_mib * 3 / 12
    assert part.compute_mib == whole.compute_mib and part.overhead_mib == PROCESS_OVERHEAD_MIB
    assert part.host_mib == whole.weights_mib + whole.kv_cache_mib * 9 / 12
    assert "3 of its 12 layers" in part.basis and whole.host_mib == 0
    for all_of_them in (["-ngl", "99"], ["-ngl", "-1"], ["--n-gpu-layers=auto"]):
        assert estimate_gguf(path, ["-c", "4096", *all_of_them]) == whole
    on_cpu = ModelConfig(engine="llamacpp", source=str(path), device="cpu", args=["-ngl", "3"])
    assert estimate_model(on_cpu) == estimate_gguf(path, [])  # no GPU seen: no offload
