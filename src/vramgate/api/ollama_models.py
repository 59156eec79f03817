"""Ollama's model routes: `GET /api/version`, `/api/tags` (what the key may use), `/api/ps` (what
runs, with vramgate's own accounting: `size_vram` on the GPU, `expires_at` from the idle time),
`POST /api/show` (details, capabilities and context length, which editors read), `POST /api/pull`
(onto vramgate's downloads, with Ollama's progress lines) and `DELETE /api/delete` (admin)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse

from vramgate import inventory
from vramgate.api import common, guards
from vramgate.api import ollama_convert as convert
from vramgate.api.anthropic import context_length
from vramgate.api.common import admin_key, any_key, scheduler_of
from vramgate.api.ollama import hub_name, resolve_label
from vramgate.auth import Access
from vramgate.config import ModelConfig
from vramgate.downloads import DownloadError
from vramgate.errors import BadRequest, Conflict, ModelNotFound
from vramgate.gpu.estimate import read_gguf_header
from vramgate.scheduling.driver import Scheduler
from vramgate.scheduling.snapshot import State
from vramgate.scheduling.view import ttl_of

router = APIRouter()
PULL_POLL_S = 0.5


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": convert.VERSION}


@router.get("/api/tags")
async def tags(request: Request, access: Access = Depends(any_key)) -> dict[str, Any]:
    """Every model the key may use: configured ones, and with allow_adhoc those of models_dir."""
    scheduler = scheduler_of(request)
    settings = scheduler.settings
    names = [n for n in settings.models if access.may_use(n)]
    entries: list[inventory.Entry] = []
    if settings.allow_adhoc and (access.open or access.api):  # who may use ad-hoc models
        found = await asyncio.to_thread(inventory.scan, Path(settings.models_dir))
        entries = [e for e in found if e.name not in names]
    listed = await asyncio.to_thread(
        lambda: [_tag(n, settings.models[n]) for n in names] + [_entry_tag(e) for e in entries]
    )
    return {"models": listed}


@router.get("/api/ps")
async def ps(request: Request, access: Access = Depends(any_key)) -> dict[str, Any]:
    scheduler = scheduler_of(request)
    running = []
    for name, inst in scheduler.instances.items():
        if not inst.is_running or not access.may_use(name):
            continue
        footprint = scheduler.memory.footprint(inst)[0] or 0
        on_gpu = (scheduler.memory.used_now(inst) or footprint) if inst.gpus else 0
        host = (inst.host_mib or 0) if inst.asleep else 0
        ttl = ttl_of(inst, scheduler.settings)
        idle = inst.state is State.READY and inst.is_idle and inst.last_used_wall
        expires = (inst.last_used_wall or time.time()) + ttl if idle and ttl else None
        tag = await asyncio.to_thread(_tag, name, inst.model)
        running.append({
            **tag,
            "size": max(footprint, on_gpu, host) << 20,
            "size_vram": on_gpu << 20,
            "expires_at": convert.iso(expires) if expires else "2318-01-01T00:00:00Z",
            "context_length": _context(scheduler, name, inst.model),
        })  # fmt: skip
    return {"models": running}


@router.post("/api/show")
async def show(request: Request, access: Access = Depends(any_key)) -> dict[str, Any]:
    body = await _json(request)
    scheduler = scheduler_of(request)
    name = await _known(scheduler, access, body)
    model = scheduler.settings.models[name]
    adapter = scheduler.adapters[model.engine]
    meta = await asyncio.to_thread(_gguf_meta, model)
    arch = str(meta.get("general.architecture", ""))
    capabilities = ["embedding"] if model.task == "embed" else ["completion"]
    template = str(meta.get("tokenizer.chat_template", ""))
    if model.task == "generate" and "tool" in template:
        capabilities.append("tools")
    if adapter.takes_images(model):
        capabilities.append("vision")
    info = {k: v for k, v in meta.items() if isinstance(v, int | float | str) and len(str(v)) < 200}
    context = _context(scheduler, name, model)
    if arch and context:
        info[f"{arch}.context_length"] = context
    tag = await asyncio.to_thread(_tag, name, model)
    return {
        "license": "", "modelfile": "", "parameters": "", "template": template,
        "details": tag["details"], "model_info": info, "capabilities": capabilities,
        "modified_at": tag["modified_at"],
    }  # fmt: skip


@router.post("/api/pull", dependencies=[Depends(admin_key)])
async def pull(request: Request) -> Response:
    """A Hub repository (`hf.co/OWNER/REPO:QUANT`, or `OWNER/REPO[:QUANT]`) into models_dir; the
    Ollama library's own names (`llama3.2`) are not on the Hub: a clear 400."""
    body = await _json(request)
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("model: the name of the model to pull")
    hub = name if name.startswith(("hf.co/", "huggingface.co/")) else f"hf.co/{name}"
    repo, quant = hub_name(hub)
    if repo is None:
        raise BadRequest(
            f"'{name}' is not a Hugging Face repository: vramgate downloads from the Hub; "
            "ask for hf.co/OWNER/REPO[:QUANT] (e.g. hf.co/unsloth/gemma-3-270m-it-GGUF:Q4_K_M)"
        )
    downloads = request.app.state.downloads
    try:
        job = await asyncio.to_thread(downloads.create, repo, quantization=quant)
    except DownloadError as exc:
        raise BadRequest(f"pull {name}: {exc}") from None
    lines = _progress(job)
    if body.get("stream", True) is False:
        last = b""
        async for line in lines:
            last = line
        status = 200 if b'"success"' in last else 500
        return Response(last.strip(), status, media_type="application/json")
    return StreamingResponse(lines, media_type="application/x-ndjson")


async def _progress(job: Any) -> AsyncIterator[bytes]:
    yield _line({"status": "pulling manifest"})
    seen: dict[str, int] = {}
    while True:
        info = job.public()
        for f in info["files"]:
            done = f["bytes_done"]
            if seen.get(f["path"]) != done:
                seen[f["path"]] = done
                digest = "sha256:" + hashlib.sha256(f["path"].encode()).hexdigest()
                yield _line({"status": f"pulling {f['path']}", "digest": digest,
                             "total": f["size"] or 0, "completed": done})  # fmt: skip
        if info["state"] in ("done", "failed", "cancelled"):
            break
        await asyncio.sleep(PULL_POLL_S)
    if info["state"] != "done":
        yield convert.error_line(f"pull {job.repo}: {info['error'] or info['state']}")
        return
    for status in ("verifying sha256 digest", "writing manifest", "success"):
        yield _line({"status": status})


@router.delete("/api/delete")
async def delete(request: Request, access: Access = Depends(admin_key)) -> Response:
    """Removes a model of models_dir (its engine stopped first); configured models are the
    configuration's to remove."""
    body = await _json(request)
    scheduler = scheduler_of(request)
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("model: the name of the model to delete")
    label = await resolve_label(scheduler, name)
    if label in scheduler.settings.models and label not in scheduler.adhoc_names:
        raise Conflict(f"model '{label}' is configured: remove it from the configuration file")
    root = await asyncio.to_thread(Path(scheduler.settings.models_dir).resolve)
    entry = await asyncio.to_thread(inventory.find, root, label)
    if entry is None:
        raise ModelNotFound(f"model '{name}' not found")
    if entry.path.resolve() == root:  # `.`: models_dir itself is a model, and holds the rest
        raise BadRequest(f"model '{name}' is models_dir itself: it is not deleted")
    for known in [n for n in scheduler.adhoc_names if n.split("@")[0] == entry.name]:
        await common.unload(scheduler, access, known)
    await asyncio.to_thread(_remove, entry, root)
    return Response(status_code=200)


def _remove(entry: inventory.Entry, root: Path) -> None:
    for path in (entry.path, *entry.files):
        if root in path.resolve().parents:  # never outside models_dir, nor models_dir
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


async def _json(request: Request) -> dict[str, Any]:
    body = guards.parse_json(await request.body())
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    guards.check_stream(body)
    return body


async def _known(scheduler: Scheduler, access: Access, body: dict[str, Any]) -> str:
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("model: the name of a model")
    label = await resolve_label(scheduler, name)
    found = scheduler.settings.resolve(label)
    if found is None:
        raise ModelNotFound(f"model '{name}' not found")
    access.require_model(found)
    return found


def _line(item: dict[str, Any]) -> bytes:
    return orjson.dumps(item) + b"\n"


def _tag(name: str, model: ModelConfig) -> dict[str, Any]:
    source = Path(model.source) if model.source else None
    exists = source is not None and source.exists()
    files = [source] if exists and source and source.is_file() else []
    if exists and source and source.is_dir():
        files = sorted(source.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    modified = max((f.stat().st_mtime for f in files), default=0.0)
    fmt = "gguf" if source is not None and source.suffix.lower() == ".gguf" else "safetensors"
    quant = inventory.gguf_quantization(source.name) if fmt == "gguf" and source else None
    meta = _gguf_meta(model) if fmt == "gguf" else {}
    return _listed(name, size, modified, fmt, quant, meta)


def _entry_tag(entry: inventory.Entry) -> dict[str, Any]:
    modified = max(f.stat().st_mtime for f in entry.files)
    meta: dict[str, Any] = {}
    if entry.format == "gguf":
        with contextlib.suppress(Exception):
            meta, _ = read_gguf_header(entry.path)
    return _listed(entry.name, entry.size, modified, entry.format, entry.quantization, meta)


def _listed(
    name: str, size: int, modified: float, fmt: str, quant: str | None, meta: dict[str, Any]
) -> dict[str, Any]:
    arch = str(meta.get("general.architecture", ""))
    params = meta.get("general.size_label") or ""
    digest = hashlib.sha256(f"{name}\0{size}\0{modified}".encode()).hexdigest()
    listed = convert.listed_name(name)
    details = {"parent_model": "", "format": fmt, "family": arch,
               "families": [arch] if arch else None, "parameter_size": str(params),
               "quantization_level": quant or ""}  # fmt: skip
    return {"name": listed, "model": listed, "modified_at": convert.iso(modified or time.time()),
            "size": size, "digest": digest, "details": details}  # fmt: skip


def _gguf_meta(model: ModelConfig) -> dict[str, Any]:
    source = Path(model.source) if model.source else None
    if source is None or source.suffix.lower() != ".gguf" or not source.is_file():
        return {}
    try:
        meta, _ = read_gguf_header(source)
    except Exception:
        return {}
    return meta


def _context(scheduler: Scheduler, name: str, model: ModelConfig) -> int | None:
    return context_length(scheduler, name, model, scheduler.adapters[model.engine])
