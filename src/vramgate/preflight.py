"""What `vramgate check` finds before a first request would: flags in a model's `args` that its
engine's binary does not list in its own --help, and (--start) each engine started once as the
gateway starts it, then stopped."""

from __future__ import annotations

import asyncio
import difflib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vramgate.config import Settings
from vramgate.engines import adapters
from vramgate.errors import GatewayError
from vramgate.statedir import StateDirLock

HELP_TIMEOUT_S = 10.0  # llama-server prints its help in about 40 ms; a hung binary is not ours
FLAG = re.compile(r"--?[A-Za-z][\w.-]*")


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)  # `vramgate check` exits 1
    notes: list[str] = field(default_factory=list)  # what was not checked, and why


def parse_help(text: str) -> frozenset[str]:
    """The flags a --help lists where llama-server's does: at the start of a line, comma
    separated, before the value's placeholder and the description (`-c,    --ctx-size N`)."""
    flags: set[str] = set()
    for line in text.splitlines():
        for token in line.split():
            flag = token.rstrip(",")
            if not FLAG.fullmatch(flag):
                break
            flags.add(flag)
    return frozenset(flags)


def read_flags(binary: str, help_args: tuple[str, ...]) -> frozenset[str] | str:
    """The flags `binary` lists, or why they could not be read."""
    path = shutil.which(binary)
    if path is None:
        return f"engine binary {binary!r} not found"
    try:
        done = subprocess.run(
            [path, *help_args], capture_output=True, text=True, errors="replace",
            stdin=subprocess.DEVNULL, timeout=HELP_TIMEOUT_S, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"`{binary} {' '.join(help_args)}` did not finish in {HELP_TIMEOUT_S:g} s"
    except OSError as exc:
        return f"cannot run {binary!r}: {exc.strerror}"
    flags = parse_help(done.stdout + done.stderr)
    if not flags:
        return f"`{binary} {' '.join(help_args)}` listed no flags (exit {done.returncode})"
    return flags


def flags_of(args: list[str]) -> Iterator[tuple[int, str]]:
    """The flags of a model's `args` (`--name=value` as `--name`), by index; values that look
    like flags (`-1`) are not."""
    for i, arg in enumerate(args):
        flag = arg.partition("=")[0]
        if FLAG.fullmatch(flag):
            yield i, flag


def check_flags(settings: Settings) -> Findings:
    """Every flag of every model whose engine says how to list its flags (`help_args`), checked
    against the configured binary's --help, read once per binary."""
    found = Findings()
    engines = adapters(settings)
    listed: dict[str, frozenset[str] | str] = {}
    unchecked: dict[str, list[str]] = {}
    for name, model in settings.models.items():
        adapter = engines[model.engine]
        runtime = settings.runtime_of(model)
        if not adapter.help_args or not model.args:
            if model.args:
                unchecked.setdefault(model.engine, []).append(name)
            continue
        if runtime != "local":
            found.notes.append(
                f"models.{name}: runs on the {runtime} runtime, whose {adapter.kind} binary is not "
                "this machine's: its args are not checked"
            )
            continue
        binary = adapter.binary()
        if binary not in listed:
            listed[binary] = read_flags(binary, adapter.help_args)
        known = listed[binary]
        if isinstance(known, str):
            found.notes.append(f"models.{name}: {known}: its args are not checked")
            continue
        for i, flag in flags_of(model.args):
            if flag not in known:
                close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
                hint = f"did you mean {close[0]!r}? " if close else ""
                found.errors.append(
                    f"models.{name}.args[{i}]: {binary} has no flag {flag!r} (not in its "
                    f"{' '.join(adapter.help_args)}); {hint}fix or remove it, or point "
                    f"engines.{adapter.kind}.binary at a build that has it"
                )
    for kind, names in unchecked.items():
        found.notes.append(
            f"{kind} models ({', '.join(names)}): args not checked against the engine (its "
            "help is not read: slow, or no engine of its own); `vramgate check --start` starts them"
        )
    return found


@dataclass
class Started:
    name: str
    seconds: float
    error: GatewayError | None  # None: it became ready


async def start_each(settings: Settings, names: list[str]) -> list[Started]:
    """Starts each model's engine as the gateway does (its scheduler: placement, runtime,
    readiness within start_timeout), one at a time, each stopped before the next; whatever
    happens, even a Ctrl-C, every engine is stopped before this returns (and the runtime's
    watchdog kills them should this process die)."""
    from vramgate.app import Collaborators
    from vramgate.memory import Memory
    from vramgate.scheduling.driver import Scheduler

    lock = StateDirLock(Path(settings.state_dir))
    # A gateway on this state_dir: StateDirBusy (its engines share GPUs); a state_dir that
    # cannot be made: StateDirUnusable (serve goes on without it; a check says so and stops).
    lock.claim()
    parts = Collaborators.for_settings(settings)
    scheduler = Scheduler(settings, parts.runtime, Memory(settings, parts.gpus, parts.footprints),
                          parts.events)  # fmt: skip
    results: list[Started] = []
    try:
        await scheduler.start()
        for name in names:
            began = time.monotonic()
            error: GatewayError | None = None
            try:
                await scheduler.ensure_ready(name)
            except GatewayError as exc:
                error = exc
            finally:
                if scheduler.instances[name].is_running:  # a failed start left nothing
                    await asyncio.shield(scheduler.stop(name, "unload"))
            results.append(Started(name, time.monotonic() - began, error))
    finally:
        await scheduler.close()
        lock.release()
    return results
