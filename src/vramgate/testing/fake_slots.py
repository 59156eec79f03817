"""The fake engine's prompt cache with llama-server's slot API, so that keeping KV caches across
swaps is tested without llama.cpp: `GET /slots`, `POST /slots/{id}?action=save|restore` with a
bare file name under `--slot-save-path`, and `timings.cache_n` in each answer (how many of the
prompt's characters, the fake's tokens, were found cached in the slot).

Each slot keeps the text of the last prompt it evaluated; a save writes it to the file, a restore
reads it back (`--restore-ignored` acknowledges restores and keeps nothing, as some llama.cpp
builds do)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aiohttp import web

SLOTS = web.AppKey("slots", dict)  # slot id -> the prompt text it holds
SLOT_OPTS = web.AppKey("slot_opts", argparse.Namespace)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slots", type=int, default=2, help="Prompt cache slots (llama-server -np).")
    p.add_argument("--slot-save-path", default=None, help="Where slots are saved (llama-server).")
    p.add_argument(
        "--restore-ignored", action="store_true", help="Answer restores but keep nothing."
    )


def add_routes(app: web.Application, opts: argparse.Namespace) -> None:
    app[SLOTS] = {i: "" for i in range(opts.slots)}
    app[SLOT_OPTS] = opts
    app.router.add_get("/slots", list_slots)
    app.router.add_post("/slots/{id}", slot_action)


def evaluate(app: web.Application, body: dict[str, Any]) -> dict[str, int]:
    """A prompt evaluated in its slot (`id_slot`, else 0): the timings llama-server reports."""
    prompt = body.get("prompt") if "prompt" in body else str(body.get("messages", ""))
    prompt = prompt if isinstance(prompt, str) else str(prompt)
    slots = app[SLOTS]
    slot = int(body.get("id_slot", 0)) % max(1, len(slots))
    held = slots[slot]
    same = next((i for i, (a, b) in enumerate(zip(held, prompt, strict=False)) if a != b), None)
    cached = held[: min(len(held), len(prompt)) if same is None else same]
    slots[slot] = prompt
    return {"cache_n": len(cached), "prompt_n": len(prompt) - len(cached)}


async def list_slots(request: web.Request) -> web.Response:
    slots = request.app[SLOTS]
    return web.json_response([{"id": i, "n_past": len(text)} for i, text in slots.items()])


async def slot_action(request: web.Request) -> web.Response:
    opts = request.app[SLOT_OPTS]
    slots = request.app[SLOTS]
    slot = int(request.match_info["id"])
    action = request.query.get("action")
    filename = (await request.json()).get("filename", "")
    if opts.slot_save_path is None or "/" in filename or slot not in slots:
        return _error("bad slot request")
    path = Path(opts.slot_save_path) / filename
    if action == "save":
        text = slots[slot]
        path.write_text(text)
        saved = {"n_saved": len(text), "n_written": len(text)}
        return web.json_response({"id_slot": slot, "filename": filename, **saved})
    if action == "restore":
        try:
            text = path.read_text()
        except OSError:
            return _error("no such file")
        if not opts.restore_ignored:
            slots[slot] = text
        return web.json_response({"id_slot": slot, "filename": filename, "n_restored": len(text)})
    return _error(f"action {action!r}")


def _error(message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "code": 400}}, status=400)
