"""Learned footprints: what each model measured after loading, kept in state_dir/footprints.json.

Keyed by model name and a hash of everything that changes memory (engine, source, command, args,
task, and the model file's size and mtime), so a changed definition or a file replaced at the
same path is learned anew. Written atomically (temp file, fsync, rename); a
corrupt file is set aside and reported, a write that fails (full disk) is reported and retried at
the next measurement: the gateway keeps serving either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

from vramgate.config import ModelConfig

log = logging.getLogger("vramgate.footprints")
KEPT_LOADS = 5  # the footprint is the max over this many recent loads


def footprint_key(name: str, model: ModelConfig) -> str:
    """`name@digest` of what changes memory, the model file's identity included: a file
    replaced at the same path (another quantization, a newer download) is learned anew, and
    its kept KV caches (keyed alike) are never restored into it."""
    identity, _ = file_identity(model.source)
    return _key(name, model, identity)


def file_identity(source: str | None) -> tuple[str, int]:
    """(identity, newest mtime in ns) of a model on this machine's disk: a file's size and
    mtime; a folder's (safetensors, config.json) of each file in it. ("", 0): not a local
    path (a hub id, a file on a cluster's node that this machine cannot see), as before."""
    if not source:
        return "", 0
    path = Path(source)
    try:
        if path.is_file():
            st = path.stat()
            return f"{st.st_size}:{st.st_mtime_ns}", st.st_mtime_ns
        if not path.is_dir():
            return "", 0
        files = [(f.name, f.stat()) for f in sorted(path.iterdir()) if f.is_file()]
    except OSError:
        return "", 0
    identity = ",".join(f"{n}:{st.st_size}:{st.st_mtime_ns}" for n, st in files)
    return identity, max((st.st_mtime_ns for _, st in files), default=0)


def _key(name: str, model: ModelConfig, identity: str) -> str:
    parts = [model.engine, model.source or "", model.cmd or "", model.task, *model.args]
    if model.gpus > 1:  # split over N GPUs, a load takes more in all (each holds its copies)
        parts.append(f"gpus={model.gpus}")
    # keep_kv changes a sliding-window model's cache (--swa-full): unset, it follows from the
    # file and args (estimate.swa_full_is_cheap), so each setting is learned apart.
    if model.keep_kv is not None:
        parts.append("keep_kv" if model.keep_kv else "keep_kv=false")
    if identity:  # absent, the key is what it was before keys held the file's identity
        parts.append(f"file={identity}")
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
    return f"{name}@{digest}"


class FootprintStore:
    """Measured MiB per model definition, persisted as JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict] = self._load()
        # Measurements are recorded from worker threads (off the event loop: fsync is slow).
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("loads_mib"), list) for v in data.values()
            ):
                raise ValueError("not a mapping of model entries")
            return data
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.warning("footprints file %s is unreadable (%s); moved to %s", self.path, exc, aside)
            with contextlib.suppress(OSError):
                self.path.rename(aside)
            return {}

    def get_load_s(self, key: str) -> float | None:
        """Seconds its last load took (spawn to ready), for `gpus.eviction: cost`."""
        entry = self.entries.get(key)
        value = entry.get("load_s") if entry else None
        return float(value) if isinstance(value, int | float) else None

    def record_load_s(self, key: str, seconds: float) -> None:
        with self._lock:
            entry = self.entries.setdefault(key, {"loads_mib": []})
            entry["load_s"] = round(seconds, 3)
            self.save()

    def adopt_legacy(self, name: str, model: ModelConfig, suffixes: tuple[str, ...]) -> None:
        """Footprints learned before keys held the file's identity (an older footprints.json):
        taken over where measured after the file was last written, so of this very file; an
        older one is left unread (the file changed since) and the model is learned anew."""
        identity, mtime_ns = file_identity(model.source)
        if not identity:
            return  # its key did not change
        old, new = _key(name, model, ""), _key(name, model, identity)
        with self._lock:
            moved = False
            for suffix in suffixes:
                entry = self.entries.get(old + suffix)
                if entry is None or new + suffix in self.entries:
                    continue
                if float(entry.get("updated", 0)) * 1e9 > mtime_ns:
                    self.entries[new + suffix] = self.entries.pop(old + suffix)
                    moved = True
            if moved:
                self.save()

    def adopt(self, old: str, new: str) -> None:
        """An entry kept under a key of an older format, taken over where the new one is unset."""
        with self._lock:
            if old not in self.entries or new in self.entries:
                return
            self.entries[new] = self.entries.pop(old)
            self.save()

    def get_mib(self, key: str) -> int | None:
        entry = self.entries.get(key)
        return max(entry["loads_mib"]) if entry and entry["loads_mib"] else None

    def record(self, key: str, mib: int, *, new_load: bool) -> None:
        """Adds a load's measurement, or raises the current load's if it grew."""
        with self._lock:
            self._record(key, mib, new_load=new_load)

    def _record(self, key: str, mib: int, *, new_load: bool) -> None:
        entry = self.entries.setdefault(key, {"loads_mib": []})
        loads: list[int] = entry["loads_mib"]
        if new_load or not loads:
            loads.append(mib)
        elif mib > loads[-1]:
            loads[-1] = mib
        else:
            return
        del loads[:-KEPT_LOADS]
        entry["updated"] = time.time()
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w") as f:
                json.dump(self.entries, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("cannot save footprints to %s (%s); kept in memory", self.path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
