"""What is in models_dir: every GGUF model and safetensors folder, with its format, quantization,
the engine that serves it, an estimated footprint, and whether the configuration uses it.

Also resolves a request's model name to an inventory entry for ad-hoc use (`allow_adhoc`),
refusing anything outside models_dir.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vramgate.config import EngineKind, ModelConfig, Settings, format_errors
from vramgate.errors import BadRequest
from vramgate.gpu.estimate import Estimate, EstimateError, estimate_gguf, estimate_safetensors

SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.I)
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


_estimates: dict[tuple[str, int, float], Estimate | None] = {}


def estimate(entry: Entry) -> Estimate | None:
    """The entry's footprint estimate, cached until its files change."""
    first = entry.files[0].stat()
    key = (str(entry.path), entry.size, first.st_mtime)
    if key not in _estimates:
        try:
            if entry.format == "gguf":
                _estimates[key] = estimate_gguf(entry.path)
            else:
                _estimates[key] = estimate_safetensors(entry.path)
        except EstimateError:
            _estimates[key] = None
    return _estimates[key]


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


def find(models_dir: Path, label: str) -> Entry | None:
    """The inventory entry a request names (its name, or its path inside models_dir).

    A name that points outside models_dir (absolute, `..`, a symlink leading out) is refused
    with 400, before anything is looked up.
    """
    root = models_dir.resolve()
    if Path(label).is_absolute() or ".." in Path(label).parts or not within(root, root / label):
        raise BadRequest(f"model {label!r}: ad-hoc models must be inside models_dir ({root})")
    for entry in scan(root):
        if label in (entry.name, entry.path.relative_to(root).as_posix()):
            return entry
    return None


ADHOC_OPTIONS = {"engine", "context_length", "ttl", "gpu_memory_mib"}
CONTEXT_FLAG = {"llamacpp": "-c", "vllm": "--max-model-len", "sglang": "--context-length"}


def adhoc_model(entry: Entry, root: Path, options: Any) -> ModelConfig:
    """The model definition for an inventory entry named by a request, with the request's own
    settings (its `vramgate` object): engine, context_length, ttl, gpu_memory_mib."""
    if not within(root, entry.path):
        raise BadRequest(f"model {entry.name!r} leads outside models_dir ({root})")
    options = options or {}
    if not isinstance(options, dict):
        raise BadRequest("`vramgate` must be an object of settings for an ad-hoc model")
    unknown = set(options) - ADHOC_OPTIONS
    if unknown:
        accepted = ", ".join(sorted(ADHOC_OPTIONS))
        raise BadRequest(f"unknown `vramgate` settings {sorted(unknown)}; accepted: {accepted}")
    engine = options.get("engine", entry.engine)
    data: dict[str, Any] = {"engine": engine, "source": str(entry.path)}
    if "context_length" in options:
        flag = CONTEXT_FLAG.get(engine)
        if flag is None:
            raise BadRequest(f"engine {engine!r} cannot be given a context length")
        data["args"] = [flag, str(options["context_length"])]
    if "ttl" in options:
        data["ttl"] = options["ttl"]
    if "gpu_memory_mib" in options:
        data["vram_mib"] = options["gpu_memory_mib"]
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(format_errors(exc, "the request's `vramgate` settings")) from None


def within(root: Path, path: Path) -> bool:
    """`path`, symlinks followed, is `root` (resolved) or inside it."""
    target = path.resolve()
    return target == root or root in target.parents
