"""What is in models_dir: every GGUF model and safetensors folder, with its format, quantization,
the engine that serves it, an estimated footprint, and whether the configuration uses it.

Also resolves a request's model name to an inventory entry for ad-hoc use (`allow_adhoc`),
refusing anything outside models_dir.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vramgate.config import EngineKind, ModelConfig, Seconds, Settings, format_errors
from vramgate.errors import BadRequest
from vramgate.gpu.estimate import Estimate, EstimateError, estimate_gguf, estimate_safetensors

SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.I)
ESTIMATES_KEPT = 256
QUANT_IN_NAME = re.compile(r"(?:^|[-_.])((?:I?Q\d|F16|BF16|F32)[A-Z0-9_]*)(?:[-_.]|$)", re.I)


def gguf_quantization(filename: str) -> str | None:
    """The quantization a GGUF file's name gives (model-Q4_K_M-00001-of-00002.gguf: Q4_K_M)."""
    stem = Path(SPLIT_PART.sub(".gguf", Path(filename).name)).stem
    matches = QUANT_IN_NAME.findall(stem)
    return matches[-1].upper() if matches else None


@dataclass(frozen=True)
class Entry:
    name: str  # its path inside models_dir, without .gguf: what a request may name
    path: Path  # the file (GGUF) or folder (safetensors) an engine is given
    format: str  # gguf, safetensors
    engine: EngineKind
    files: tuple[Path, ...]
    quantization: str | None

    @property
    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def scan(models_dir: Path) -> list[Entry]:
    """Every model under models_dir, sorted by name; half-downloaded files (.part) are left out."""
    root = models_dir.resolve()
    if not root.is_dir():
        return []
    entries: list[Entry] = []
    for gguf in sorted(root.rglob("*.gguf")):
        split = SPLIT_PART.search(gguf.name)
        if split and split[1] != "00001":
            continue  # the first part stands for the whole model
        files = (gguf,)
        if split:
            pattern = SPLIT_PART.sub("", gguf.name) + "-*-of-" + split[2] + ".gguf"
            files = tuple(sorted(gguf.parent.glob(pattern)))
        stem = SPLIT_PART.sub("", gguf.name) if split else gguf.stem
        name = (gguf.parent.relative_to(root) / stem).as_posix()
        entries.append(Entry(name, gguf, "gguf", "llamacpp", files, gguf_quantization(gguf.name)))
    for config in sorted(root.rglob("config.json")):
        folder = config.parent
        weights = tuple(sorted(folder.glob("*.safetensors")))
        if not weights:
            continue
        name = folder.relative_to(root).as_posix()
        entries.append(
            Entry(name, folder, "safetensors", "vllm", weights, _safetensors_quant(config))
        )
    return sorted(entries, key=lambda e: e.name)


def _safetensors_quant(config: Path) -> str | None:
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    method = (data.get("quantization_config") or {}).get("quant_method")
    return str(method) if method else data.get("torch_dtype") or data.get("dtype")


def estimate(entry: Entry) -> Estimate | None:
    """The entry's footprint estimate, cached until its files change."""
    first = entry.files[0].stat()
    return _estimate(entry.path, entry.format, entry.size, first.st_mtime)


@functools.lru_cache(maxsize=ESTIMATES_KEPT)
def _estimate(path: Path, format: str, size: int, mtime: float) -> Estimate | None:
    """Keyed by size and time too, so a changed file is read again; bounded: a models_dir that
    keeps changing (downloads, ad-hoc requests for file after file) must not grow it for ever."""
    try:
        return estimate_gguf(path) if format == "gguf" else estimate_safetensors(path)
    except EstimateError:
        return None


def describe(entry: Entry, settings: Settings) -> dict[str, Any]:
    found = estimate(entry)
    users = [
        name
        for name, m in settings.models.items()
        if m.source and _same(Path(m.source), entry.path)
    ]
    return {
        "name": entry.name,
        "path": str(entry.path),
        "format": entry.format,
        "quantization": entry.quantization,
        "engine": entry.engine,
        "size": entry.size,
        "files": [str(f) for f in entry.files],
        "estimated_mib": found.placement_mib if found else None,
        "estimate_basis": found.basis if found else None,
        "configured": bool(users),
        "configured_as": users,
    }


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def find(models_dir: Path, label: str, engine: str | None = None) -> Entry | None:
    """The inventory entry a request names: its name, its path inside models_dir (relative, or
    absolute as seed 003's clients send it), or a folder holding one model (`engine` picks the
    format where it holds both a GGUF and safetensors).

    A name that points outside models_dir (`..`, an absolute path elsewhere) is refused with
    400 before anything is looked up; one that names a symlink leading out, once found.
    """
    root = models_dir.resolve()
    if "\0" in label:  # no path holds one; the OS would refuse it deeper down (a 500)
        raise BadRequest(f"model {label!r}: a name with a NUL character names no file")
    path = Path(label)
    if path.is_absolute() and path.resolve().is_relative_to(root):
        path = path.resolve().relative_to(root)
    if path.is_absolute() or ".." in path.parts:
        raise BadRequest(f"model {label!r}: ad-hoc models must be inside models_dir ({root})")
    wanted = path.as_posix()
    named: list[Entry] = []
    inside: list[Entry] = []
    for entry in scan(root):
        relative = entry.path.relative_to(root)
        if wanted in (entry.name, relative.as_posix()):
            named.append(entry)
        elif entry.format == "gguf" and relative.parent.as_posix() == wanted:
            inside.append(entry)
    found = _pick(named, inside, engine)
    if found is not None and not all(within(root, f) for f in (found.path, *found.files)):
        # Named by its name, not its path, a symlink leading out passes the check above.
        raise BadRequest(f"model {label!r} leads outside models_dir ({root})")
    return found


def _pick(named: list[Entry], inside: list[Entry], engine: str | None) -> Entry | None:
    if engine is not None:  # llama.cpp reads GGUF, the others safetensors: the one it reads
        fits = [e for e in named + inside if (e.format == "gguf") == (engine == "llamacpp")]
        if len(fits) == 1 or (fits and fits[0] in named):
            return fits[0]
    if named:
        return named[0]
    return inside[0] if len(inside) == 1 else None


ADHOC_OPTIONS = {
    "engine", "context_length", "ttl", "gpu_memory_mib", "device", "n_gpu_layers",
    "gpu_memory_utilization",
}  # fmt: skip
CONTEXT_FLAG = {"llamacpp": "-c", "vllm": "--max-model-len", "sglang": "--context-length"}
MEMORY_FRACTION_FLAG = {"vllm": "--gpu-memory-utilization", "sglang": "--mem-fraction-static"}
ALL_LAYERS = 999  # seed 003's n_gpu_layers -1: every layer on the GPU
# Seed 003's `backend` values, and the spellings of llama.cpp people use.
BACKENDS = {"llamacpp": "llamacpp", "llama.cpp": "llamacpp", "llama_cpp": "llamacpp",
            "vllm": "vllm", "sglang": "sglang", "transformers": "transformers"}  # fmt: skip
# The fields seed 003's clients put beside `model` and `messages`: never the engine's.
SEED_FIELDS = ("backend", "device", "n_gpu_layers", "n_ctx", "max_model_len",
               "gpu_memory_utilization", "ttl")  # fmt: skip


def adhoc_model(entry: Entry, root: Path, options: Any) -> ModelConfig:
    """The model definition for an inventory entry named by a request, with the request's own
    settings (its `vramgate` object, or seed 003's fields as `seed_options` gives them)."""
    if not within(root, entry.path):
        raise BadRequest(f"model {entry.name!r} leads outside models_dir ({root})")
    options = check_options(options)
    engine = options.get("engine", entry.engine)
    data: dict[str, Any] = {"engine": engine, "source": str(entry.path)}
    args: list[str] = []
    if "context_length" in options:
        flag = CONTEXT_FLAG.get(engine)
        if flag is None:
            raise BadRequest(f"engine {engine!r} cannot be given a context length")
        args += [flag, str(options["context_length"])]
    if engine == "llamacpp" and "n_gpu_layers" in options:
        layers = options["n_gpu_layers"]
        args += ["-ngl", str(ALL_LAYERS if layers < 0 else layers)]
    fraction = MEMORY_FRACTION_FLAG.get(engine)
    if fraction and "gpu_memory_utilization" in options:
        args += [fraction, str(options["gpu_memory_utilization"])]
    if args:
        data["args"] = args
    for option, key in (("ttl", "ttl"), ("gpu_memory_mib", "vram_mib"), ("device", "device")):
        if option in options:
            data[key] = options[option]
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(format_errors(exc, "the request's ad-hoc model settings")) from None


class AdhocOptions(BaseModel):
    """The settings a request may give an ad-hoc model (its `vramgate` object), typed: a value
    of the wrong type is a 400 naming the field, never a 500 deeper down."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: EngineKind | None = None
    context_length: int | None = Field(default=None, gt=0)
    ttl: Seconds | None = Field(default=None, ge=0)
    gpu_memory_mib: int | None = Field(default=None, gt=0)
    device: Literal["auto", "cuda", "cpu"] | None = None
    n_gpu_layers: int | None = None
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)


def check_options(options: Any) -> dict[str, Any]:
    """The request's `vramgate` object as a dict of known settings (a copy); 400 otherwise."""
    options = dict(options) if isinstance(options, dict) else options or {}
    if not isinstance(options, dict):
        raise BadRequest("`vramgate` must be an object of settings for an ad-hoc model")
    unknown = set(options) - ADHOC_OPTIONS
    if unknown:
        accepted = ", ".join(sorted(ADHOC_OPTIONS))
        raise BadRequest(f"unknown `vramgate` settings {sorted(unknown)}; accepted: {accepted}")
    try:
        checked = AdhocOptions.model_validate(options)
    except ValidationError as exc:
        raise BadRequest(format_errors(exc, "the request's ad-hoc model settings")) from None
    return checked.model_dump(exclude_none=True)


def seed_options(fields: dict[str, Any]) -> dict[str, Any]:
    """Seed 003's request fields as ad-hoc settings. Like seed 003, a field for another engine
    (n_ctx is llama.cpp's, max_model_len and gpu_memory_utilization vLLM's) is ignored."""
    options: dict[str, Any] = {}
    backend = fields.get("backend")
    if backend is not None:
        if not isinstance(backend, str) or backend.lower() not in BACKENDS:
            known = ", ".join(sorted(BACKENDS))
            raise BadRequest(f"unknown `backend` {backend!r}; one of: {known}")
        options["engine"] = BACKENDS[backend.lower()]
    engine = options.get("engine")
    for field in ("device", "ttl", "n_gpu_layers", "gpu_memory_utilization"):
        if fields.get(field) is not None:
            options[field] = fields[field]
    context = fields.get("max_model_len" if engine in ("vllm", "sglang") else "n_ctx")
    if context is not None and engine in CONTEXT_FLAG:
        options["context_length"] = context
    return check_options(options)


def instance_name(entry: Entry, options: dict[str, Any]) -> str:
    """The one name of an inventory model, however a request spelled its path (`tiny`,
    `./tiny.gguf`, `/models/./tiny.gguf`): its name inside models_dir. Seed 003's exclusive mode:
    a request that chooses its engine or device gets an instance of its own, named after both,
    so the same file can run on the CPU and on a GPU at once. Its device in the name is the
    definition's (`auto` where the request gives none, as ModelConfig's default): one name, one
    definition, so `backend` alone and `backend` with `device: cuda` never collide (409)."""
    if "engine" not in options and "device" not in options:
        return entry.name
    return f"{entry.name}@{options.get('engine', entry.engine)}-{options.get('device', 'auto')}"


def within(root: Path, path: Path) -> bool:
    """`path`, symlinks followed, is `root` (resolved) or inside it."""
    target = path.resolve()
    return target == root or root in target.parents
