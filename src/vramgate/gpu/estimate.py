"""Footprint estimates from model metadata, before any measurement: GGUF and safetensors.

weights (tensor bytes) + KV cache for the context (sliding-window layers hold only their window)
+ compute buffers + a per-process CUDA overhead. An estimate is a first guess: placement adds a
safety margin, and the first measurement replaces it.
"""

from __future__ import annotations

import functools
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vramgate.config import ModelConfig
from vramgate.hub import HubError, is_hub_id, repo_safetensors

MIB = 1 << 20
# CUDA context, cuBLAS workspace and small buffers of one engine process. Calibrated on the H100
# readings in the GPU memory issue (llama-server, gemma 3 270M: 882 MiB at context 2048, 1010 MiB
# at 32768, NVML per process): what is left after weights, KV cache and the logits buffer.
PROCESS_OVERHEAD_MIB = 128
SAFETY_MARGIN = 1.10  # placement uses estimate x this until a measurement exists
DEFAULT_UBATCH = 512
DEFAULT_PARALLEL = 4  # llama-server's slots when -np is not given (then one unified cache)
# Keeping a sliding-window model's KV caches means llama-server's full cache (--swa-full), which
# it allocates and zeroes at every start: ~0.55 ms per MiB on the CPU here (gemma 3 270M at its
# 32k context: +442 MiB, +0.25 s a start; at 8k +82 MiB, +50 ms). Kept by default only while
# that adds at most this share to the model's footprint: half the +10% a kept swap may cost,
# the other half being the save, the restore and the larger engine's exit. `keep_kv: true`
# keeps it whatever it costs.
SWA_FULL_MAX_SHARE = 0.05
# Bytes per element of llama.cpp's KV cache types (blocks of 32 for the quantized ones).
KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32,
            "q5_0": 22 / 32, "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}  # fmt: skip
# Architectures whose GGUF gives a sliding window but not which layers use it (llama.cpp sets
# the pattern in code): every n-th layer is global, the others slide.
SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "cohere2": 4}
PRECISION_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
# With only a parameter count, KV cache and activations are unknown: this share of the weights
# stands for them (a first guess; the first measurement replaces it).
PARAM_ONLY_RUNTIME_SHARE = 0.2
SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                     "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


NGL_FLAGS = ("-ngl", "--n-gpu-layers", "--gpu-layers")


@dataclass(frozen=True)
class Estimate:
    """What a model takes on its GPUs (all of it, but for partial offload: then `host_mib`)."""

    weights_mib: float
    kv_cache_mib: float
    compute_mib: float
    overhead_mib: float
    context: int
    basis: str  # what it was read from
    # Partial offload (llama.cpp's -ngl N below its layer count): the weights and KV cache of
    # the layers left on the CPU, in host RAM; the fields above are then the GPU's share.
    host_mib: float = 0.0

    @property
    def total_mib(self) -> int:
        return math.ceil(
            self.weights_mib + self.kv_cache_mib + self.compute_mib + self.overhead_mib
        )

    @property
    def placement_mib(self) -> int:
        return math.ceil(self.total_mib * SAFETY_MARGIN)


class EstimateError(Exception):
    """The metadata could not be read; the message says why."""


def estimate_model(model: ModelConfig, *, hub: bool = True) -> Estimate | None:
    """An estimate for a configured model: from its files (local, or a hub repository's metadata
    when `hub`), else from `param_count`, else None."""
    source = Path(model.source) if model.source else None
    if source and source.suffix.lower() == ".gguf" and source.is_file():
        # Keeping KV caches runs sliding-window models with the full cache (engines/llamacpp.py).
        keeps = model.engine == "llamacpp" and gguf_keeps_kv(model, source)
        extra = ["--swa-full"] if keeps else []
        # On the CPU by choice, llama-server sees no GPU: every layer stays in host RAM.
        args = list(model.args) if model.device != "cpu" else _without_ngl(model.args)
        return estimate_gguf(source, [*args, *extra])
    if source and source.is_dir() and any(source.glob("*.safetensors")):
        return estimate_safetensors(source, model.args)
    if hub and model.source and is_hub_id(model.source):
        try:
            return estimate_hub(model.source, model.args)
        except EstimateError:
            if model.param_count is None:
                raise  # else the parameter count is the next best thing
    if model.param_count is not None:
        weights = model.param_count * 1e9 * PRECISION_BYTES[model.precision] / MIB
        runtime = weights * PARAM_ONLY_RUNTIME_SHARE
        basis = f"{model.param_count:g}B parameters at {model.precision}"
        return Estimate(weights, runtime, 0.0, PROCESS_OVERHEAD_MIB, 0, basis)
    return None


def _arg(args: list[str], names: tuple[str, ...], default: str | None) -> str | None:
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return default


def gpu_layers(args: Sequence[str]) -> int | None:
    """The layers llama.cpp offloads to its GPUs (`-ngl N`); None: all of them (unset, negative
    or not a number, as `auto`)."""
    value = _arg(list(args), NGL_FLAGS, None)
    return int(value) if value is not None and value.isdigit() else None


def _without_ngl(args: Sequence[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in NGL_FLAGS:
            skip = True
        elif not any(arg.startswith(f + "=") for f in NGL_FLAGS):
            out.append(arg)
    return out


def _int_arg(args: list[str], names: tuple[str, ...], default: int) -> int:
    """An integer argument (`-c 4096`), else `default`; not a number: EstimateError naming it."""
    value = _arg(args, names, None)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise EstimateError(f"{names[0]} {value!r} is not a whole number") from None


# GGUF value types: struct format of each scalar; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_SMALL_ARRAY = 4096  # longer arrays (token lists) are skipped and stood for by their length


OUTSIDE_BLOCKS = -1  # tensors of no repeating layer (token_embd, output, output_norm)


def read_gguf_header(path: Path) -> tuple[dict[str, Any], dict[int, int]]:
    """A GGUF file's metadata and its tensors' bytes by layer (`blk.<i>.*`; the others under
    OUTSIDE_BLOCKS), read from the header alone.

    Read once per file (path, size and mtime): starts, notes, estimates and the Ollama routes
    all ask, and a read holds the GIL, which a start of a model with keep_kv paid at every swap
    (bench/swap.py). The metadata returned is shared: read it, never change it.
    """
    stat = path.stat()
    return _read_gguf_header(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _read_gguf_header(
    path_name: str, size: int, mtime_ns: int
) -> tuple[dict[str, Any], dict[int, int]]:
    """Our own reader rather than gguf.GGUFReader: that one builds Python objects for every
    token of the vocabulary, about 20 s for a 262k-token model on this machine; this skips
    long arrays (token lists) without decoding them."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path_name)
    with path.open("rb") as f:

        def read(fmt: str) -> Any:
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def string() -> str:
            return f.read(int(read("<Q"))).decode("utf-8", errors="replace")

        def value(kind: int) -> Any:
            if kind in _GGUF_SCALARS:
                return read(_GGUF_SCALARS[kind])
            if kind == 8:
                return string()
            if kind == 9:
                item, count = int(read("<I")), int(read("<Q"))
                if count > _SMALL_ARRAY:  # stood for by its length, skipped unread
                    if item in _GGUF_SCALARS:
                        f.seek(count * struct.calcsize(_GGUF_SCALARS[item]), 1)
                    elif item == 8:
                        length = struct.Struct("<Q")
                        for _ in range(count):
                            f.seek(length.unpack(f.read(8))[0], 1)
                    else:
                        for _ in range(count):
                            value(item)
                    return count
                return [value(item) for _ in range(count)]
            raise EstimateError(f"{path}: unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF":
            raise EstimateError(f"{path}: not a GGUF file (bad magic)")
        read("<I")  # version
        n_tensors, n_kv = int(read("<Q")), int(read("<Q"))
        meta = {}
        for _ in range(n_kv):
            key = string()
            meta[key] = value(int(read("<I")))
        by_layer: dict[int, int] = {}
        for _ in range(n_tensors):
            name = string().split(".")
            dims = [int(read("<Q")) for _ in range(int(read("<I")))]
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(int(read("<I")))]
            read("<Q")  # offset
            layer = int(name[1]) if name[0] == "blk" and name[1:2] and name[1].isdigit() else -1
            by_layer[layer] = by_layer.get(layer, 0) + math.prod(dims) // block * size
    return meta, by_layer


def estimate_gguf(path: Path, args: Sequence[str] = ()) -> Estimate:
    try:
        meta, by_layer = read_gguf_header(path)
        weights = sum(by_layer.values())
    except (OSError, struct.error, KeyError, ValueError) as exc:
        raise EstimateError(f"{path}: not a readable GGUF file ({exc})") from exc

    def field(key: str, default: Any = None) -> Any:
        return meta.get(key, default)

    arch = str(field("general.architecture"))
    n_layer = int(field(f"{arch}.block_count", 0))
    n_embd = int(field(f"{arch}.embedding_length", 0))
    n_head = field(f"{arch}.attention.head_count", 1)
    n_head = max(n_head) if isinstance(n_head, list) else int(n_head)
    kv_heads = field(f"{arch}.attention.head_count_kv", n_head)
    per_layer_kv = kv_heads if isinstance(kv_heads, list) else [kv_heads] * n_layer
    key_len = int(field(f"{arch}.attention.key_length", n_embd // max(n_head, 1)))
    value_len = int(field(f"{arch}.attention.value_length", key_len))
    ctx_train = int(field(f"{arch}.context_length", 4096))
    window = int(field(f"{arch}.attention.sliding_window", 0))
    pattern = field(f"{arch}.attention.sliding_window_pattern", SWA_PATTERN.get(arch, 0))
    vocab = field("tokenizer.ggml.tokens", field(f"{arch}.vocab_size", 32000))
    n_vocab = len(vocab) if isinstance(vocab, list) else int(vocab)

    context = _int_arg(list(args), ("-c", "--ctx-size"), 0) or ctx_train
    ubatch = _int_arg(list(args), ("-ub", "--ubatch-size"), DEFAULT_UBATCH) or DEFAULT_UBATCH
    given = _int_arg(list(args), ("-np", "--parallel"), -1)
    parallel = given if given > 0 else DEFAULT_PARALLEL
    # llama-server: one cache shared by its slots when -np is left to it (or -kvu), else one each.
    unified = given <= 0 or bool({"-kvu", "--kv-unified"} & set(args))
    k_bytes = KV_BYTES.get(_arg(list(args), ("-ctk", "--cache-type-k"), "f16") or "f16", 2.0)
    v_bytes = KV_BYTES.get(_arg(list(args), ("-ctv", "--cache-type-v"), "f16") or "f16", 2.0)

    # llama.cpp keeps the window of each slot and one ubatch of cells for a sliding layer,
    # padded to 256 (llama-kv-cache-iswa.cpp); gemma 3 270M's default: 4 x 512 + 512. With
    # --swa-full a sliding layer holds the whole context, as the others do.
    full_swa = "--swa-full" in args
    streams = 1 if unified else parallel
    per_stream = window * (parallel if unified else 1) + ubatch
    swa_cells = min(context, streams * math.ceil(per_stream / 256) * 256)
    # -ngl N: llama.cpp offloads the last N layers (i_gpu_start = n_layer - N), each with its
    # weights and its KV cache; the first ones stay in host RAM.
    offloaded = gpu_layers(args)
    on_gpu = n_layer if offloaded is None else min(offloaded, n_layer)
    kv = kv_host = 0.0
    slides_somewhere = False
    for il in range(n_layer):
        sliding = bool(window and isinstance(pattern, int) and pattern and (il + 1) % pattern)
        slides_somewhere = slides_somewhere or sliding
        cells = swa_cells if sliding and not full_swa else context
        heads = int(per_layer_kv[il])
        layer = heads * cells * (key_len * k_bytes + value_len * v_bytes)
        if il >= n_layer - on_gpu:
            kv += layer
        else:
            kv_host += layer
    # The largest compute buffer is the logits of one ubatch over the vocabulary, in f32.
    compute = n_vocab * ubatch * 4
    held = full_swa and slides_somewhere
    basis = f"GGUF {arch}" + (", full sliding-window cache (--swa-full)" if held else "")
    gpu_weights = weights
    if on_gpu < n_layer:
        # Only the last N layers' own tensors: llama.cpp keeps the input layer (token_embd) on
        # the CPU always, the output layer unless N > n_layer (llama-model.cpp load_tensors);
        # a share of every tensor put gemma-3-270m's 170 MiB embeddings half on the GPU.
        gpu_weights = sum(by_layer.get(il, 0) for il in range(n_layer - on_gpu, n_layer))
        basis += f", {on_gpu} of its {n_layer} layers on the GPU (-ngl)"
    return Estimate(gpu_weights / MIB, kv / MIB, compute / MIB, PROCESS_OVERHEAD_MIB, context,
                    basis, (weights - gpu_weights + kv_host) / MIB)  # fmt: skip


def slides(path: Path) -> bool:
    """The GGUF's model uses sliding-window attention (gemma 2 and 3, among others); an
    unreadable file: False."""
    try:
        meta, _ = read_gguf_header(path)
    except Exception:
        return False
    arch = meta.get("general.architecture")
    return int(meta.get(f"{arch}.attention.sliding_window", 0) or 0) > 0


def swa_full_is_cheap(path: Path, args: Sequence[str] = ()) -> bool:
    """Whether the full sliding-window cache (--swa-full) adds at most SWA_FULL_MAX_SHARE to
    the GGUF's estimate: always for a model that does not slide. Where nothing can be estimated
    (an unreadable file, `-c 8k`), only a model that does not slide: the cost is unknown, and a
    start never fails over it (llama-server says what is wrong with its file or arguments)."""
    try:
        plain = estimate_gguf(path, args)
        full = estimate_gguf(path, [*args, "--swa-full"])
    except Exception:
        return not slides(path)
    return full.total_mib - plain.total_mib <= SWA_FULL_MAX_SHARE * plain.total_mib


def gguf_keeps_kv(model: ModelConfig, source: Path) -> bool:
    """llama-server keeps `model`'s KV caches across swaps: its `keep_kv`, else by default
    where that costs little (swa_full_is_cheap)."""
    return model.keep_kv if model.keep_kv is not None else swa_full_is_cheap(source, model.args)


def estimate_hub(repo: str, args: Sequence[str] = ()) -> Estimate:
    """A hub repository, from the safetensors headers and config.json alone (no weights)."""
    try:
        counts, config = repo_safetensors(repo)
    except HubError as exc:
        raise EstimateError(str(exc)) from exc
    unknown = sorted(set(counts) - set(SAFETENSORS_BYTES))
    if unknown:
        raise EstimateError(f"{repo}: unknown safetensors dtypes {unknown}")
    weights = sum(count * SAFETENSORS_BYTES[dtype] for dtype, count in counts.items())
    return safetensors_estimate(weights, config, args, f"hub {repo} safetensors")


def safetensors_bytes(path: Path) -> int:
    """Parameter bytes from a safetensors file's header, without reading the weights."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        total += math.prod(info["shape"]) * SAFETENSORS_BYTES[info["dtype"]]
    return total


def estimate_safetensors(directory: Path, args: Sequence[str] = ()) -> Estimate:
    """A local folder: parameter bytes from the safetensors headers, KV cache from config.json."""
    weights = sum(safetensors_bytes(p) for p in sorted(directory.glob("*.safetensors")))
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else None
    return safetensors_estimate(weights, config, args, "safetensors")


def safetensors_estimate(
    weights_bytes: int, config: dict[str, Any] | None, args: Sequence[str], basis: str
) -> Estimate:
    """Weights + KV cache for the served context (vLLM's --max-model-len, SGLang's
    --context-length, else the model's own) x the sequences allowed at once (--max-num-seqs,
    --max-running-requests; else 1: the engines pool KV cache, so one full-length sequence is
    the least they must hold) + one process's overhead."""
    kv = 0.0
    context = _int_arg(list(args), ("--max-model-len", "--context-length"), 0)
    seqs = _int_arg(list(args), ("--max-num-seqs", "--max-running-requests"), 1) or 1
    if config is not None:
        cfg = config.get("text_config", config)
        layers = int(cfg.get("num_hidden_layers", 0))
        heads = int(cfg.get("num_attention_heads", 1))
        kv_heads = int(cfg.get("num_key_value_heads", heads))
        head_dim = int(cfg.get("head_dim") or cfg.get("hidden_size", 0) // max(heads, 1))
        context = context or int(cfg.get("max_position_embeddings", 2048))
        dtype = cfg.get("torch_dtype") or cfg.get("dtype")
        dtype_bytes = 4 if dtype == "float32" else 2
        kv = 2 * layers * kv_heads * head_dim * context * dtype_bytes * seqs
    return Estimate(weights_bytes / MIB, kv / MIB, 0.0, PROCESS_OVERHEAD_MIB, context, basis)
