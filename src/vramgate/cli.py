"""The `vramgate` command: serve, check, ps, load, unload, pull, estimate, config-schema."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer

from vramgate.config import ConfigError, Settings, engine_kinds, load_settings
from vramgate.httpserver import MergedWritesProtocol

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file.", envvar="VRAMGATE_CONFIG")
]
UrlOpt = Annotated[str, typer.Option("--url", help="The gateway to ask.", envvar="VRAMGATE_URL")]
DEFAULT_URL = "http://127.0.0.1:8080"
MODEL_HELP = (
    f"NAME=[ENGINE:]SOURCE, ENGINE one of {', '.join(engine_kinds())} (default: llamacpp for "
    "a .gguf, else vllm; command takes a command line with ${PORT}). Repeatable."
)
PS_COLUMNS: tuple[str, ...] = (
    "MODEL", "ENGINE", "STATE", "GPU", "FOOTPRINT", "PID", "PORT", "UP", "IDLE", "IN-FLIGHT",
    "STARTS",
)  # fmt: skip


def _load(config: Path | None, models: list[str], **overrides: Any) -> Settings:
    try:
        return load_settings(config, models=models, overrides=overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def serve(
    config: ConfigOpt = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help=MODEL_HELP),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
) -> None:
    """Serve the configured models behind one OpenAI-compatible endpoint."""
    import uvicorn

    from vramgate.app import create_app

    if config is None and not model:
        typer.echo("error: give --config FILE or at least one --model NAME=SOURCE", err=True)
        raise typer.Exit(2)
    overrides = {"host": host, "port": port, "log_level": log_level}
    settings = _load(config, model or [], **overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def reload_settings() -> Settings:  # the same sources, read again (SIGHUP, /admin/reload)
        return load_settings(config, models=model or [], overrides=overrides)

    app = create_app(settings, reload_settings)
    server = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # uvicorn's httptools protocol, one write per answer, clients' reads bounded
        http=functools.partial(  # type: ignore[arg-type]
            MergedWritesProtocol,
            write_timeout_s=lambda: app.current_settings().client_write_timeout,
        ),
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        # Engines are reached on loopback only; no X-Forwarded-* rewriting, no extra headers.
        proxy_headers=False,
        server_header=False,
        # On SIGTERM, in-flight requests (streams too) get drain_timeout to finish; then the
        # lifespan's end stops every engine.
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout),
    )
    sockets = None
    if settings.ollama_port is not None:  # a second listener, for Ollama clients' own port
        sockets = [
            _listen(settings.host, settings.port),
            _listen(settings.host, settings.ollama_port),
        ]
    uvicorn.Server(server).run(sockets=sockets)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    sock.set_inheritable(True)
    return sock


@app.command()
def check(
    config: Annotated[Path, typer.Argument(help="YAML config file to validate.")],
    models: Annotated[
        list[str] | None, typer.Argument(help="With --start: the models to start (default: all).")
    ] = None,
    start: Annotated[
        bool, typer.Option("--start", help="Start each engine once here, wait, stop it.")
    ] = False,
) -> None:
    """Validate a config file and each llama.cpp model's flags against its binary's --help;
    exit 1 with every error (file, key path, expected). --start also starts engines."""
    from vramgate import preflight

    settings = _load(config, [])
    typer.echo(f"{config}: ok, {len(settings.models)} model(s): {', '.join(settings.models)}")
    for first, one, second, other in settings.ambiguous_patterns():
        typer.echo(
            f"warning: alias patterns {first!r} ({one}) and {second!r} ({other}) are as long as "
            "each other and some names match both: the one listed first in the file wins; make "
            "one longer or more precise",
            err=True,
        )
    found = preflight.check_flags(settings)
    for note in found.notes:
        typer.echo(f"note: {note}", err=True)
    for error in found.errors:
        typer.echo(f"error: {error}", err=True)
    if models and not start:
        typer.echo("error: models are named only with --start", err=True)
        raise typer.Exit(2)
    failed = bool(found.errors)
    if start:
        failed |= _start_each(settings, models or list(settings.models))
    if failed:
        raise typer.Exit(1)


def _start_each(settings: Settings, names: list[str]) -> bool:
    """`check --start`: each engine's start, reported; True if any failed."""
    from vramgate import preflight
    from vramgate.statedir import StateDirBusy, StateDirUnusable

    names = list(dict.fromkeys(names))  # each once, in the order first named
    unknown = [n for n in names if n not in settings.models]
    if unknown:
        known = ", ".join(settings.models)
        typer.echo(f"error: no model {', '.join(unknown)}; known: {known}", err=True)
        raise typer.Exit(1)
    try:
        results = asyncio.run(preflight.start_each(settings, names))
    except (StateDirBusy, StateDirUnusable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: every engine started was stopped", err=True)
        raise typer.Exit(130) from None
    for done in results:
        if done.error is None:
            typer.echo(f"models.{done.name}: started, ready in {done.seconds:.1f} s, stopped")
        else:
            typer.echo(f"error: models.{done.name}: {done.error.message}", err=True)
            if done.error.detail:
                typer.echo(done.error.detail, err=True)
    return any(done.error is not None for done in results)


@app.command()
def estimate(
    name: Annotated[str, typer.Argument(help="A model of the config file.")],
    config: ConfigOpt = None,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="NAME=SOURCE.")] = None,
) -> None:
    """Estimate a model's GPU memory from its metadata (GGUF, safetensors), part by part."""
    from vramgate.gpu.estimate import SAFETY_MARGIN, EstimateError, estimate_model

    settings = _load(config, model or [])
    if name not in settings.models:
        typer.echo(f"error: no model '{name}'; known: {', '.join(settings.models)}", err=True)
        raise typer.Exit(1)
    try:
        found = estimate_model(settings.models[name])
    except EstimateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if found is None:
        typer.echo(
            f"{name}: no metadata to estimate from "
            "(a GGUF file, a safetensors folder or a hub repository)"
        )
        raise typer.Exit(1)
    typer.echo(f"{name}: {found.basis}" + (f", context {found.context}" if found.context else ""))
    for part, mib in (
        ("weights", found.weights_mib),
        ("KV cache", found.kv_cache_mib),
        ("compute buffers", found.compute_mib),
        ("CUDA context, other", found.overhead_mib),
    ):
        typer.echo(f"  {part:20} {mib:10.1f} MiB")
    typer.echo(f"  {'total':20} {found.total_mib:10d} MiB")
    typer.echo(
        f"  {'placement uses':20} {found.placement_mib:10d} MiB (x{SAFETY_MARGIN} until measured)"
    )


def _call(url: str, method: str, path: str) -> dict[str, Any]:
    """Calls the gateway; VRAMGATE_API_KEY (an admin key, for load and unload) is sent if set."""
    key = os.environ.get("VRAMGATE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(url.rstrip("/") + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=900) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = str(exc)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1) from None
    except (urllib.error.URLError, OSError) as exc:
        typer.echo(f"error: cannot reach the gateway at {url}: {exc}", err=True)
        raise typer.Exit(1) from None


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0.0, time.time() - ts)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m"


def _footprint(m: dict[str, Any]) -> str:
    if m.get("device") == "cpu":  # on the CPU: what it holds is host RAM
        ram = m.get("ram_mib")
        return f"RAM {ram} MiB {m['ram_source']}" if ram is not None else f"RAM {m['ram_source']}"
    if m.get("footprint_mib") is None:
        return m.get("footprint_source") or "-"
    return f"{m['footprint_mib']} MiB {m['footprint_source']}"


def _no_gpu(m: dict[str, Any]) -> str:
    """The GPU column of a model on none: `cpu` where it runs there, else `-` (not placed)."""
    return "cpu" if m.get("device") == "cpu" else "-"


def _on_one_gpu(model: dict[str, Any], mib: int) -> int:
    """A model split over N GPUs holds 1/N of its memory on each."""
    return mib // max(len(model.get("gpus") or ()), 1)


def gpu_bar(gpu: dict[str, Any], models: list[dict[str, Any]], width: int = 50) -> str:
    """`GPU 0 [aaaabbb....:] 7000/10000 MiB used, 512 reserved` with a letter run per model."""
    total = gpu["total_mib"]
    cells: list[str] = []
    legend = []
    for i, m in enumerate(models):
        letter = chr(ord("a") + i % 26)
        used = _on_one_gpu(m, m.get("used_mib") or m.get("footprint_mib") or 0)
        cells += [letter] * round(used / total * width)
        legend.append(f"{letter}={m['name']}")
    other = max(0, gpu["used_mib"] - sum(_on_one_gpu(m, m.get("used_mib") or 0) for m in models))
    cells += ["#"] * round(other / total * width)  # used by processes that are not ours
    reserve = ":" * round(gpu["reserved_mib"] / total * width)
    cells = cells[: width - len(reserve)]
    bar = "".join(cells).ljust(width - len(reserve), ".") + reserve
    where = f" on {gpu['node']}" if gpu.get("node") else ""
    line = (
        f"GPU {gpu['index']}{where} [{bar}] {gpu['used_mib']}/{total} MiB used, "
        f"{gpu['reserved_mib']} reserved ({gpu['kind']})"
    )
    return line + (f"  {' '.join(legend)}" if legend else "")


def host_bar(ram: dict[str, Any], width: int = 50) -> str:
    """`RAM   [aaab........] 530/20000 MiB held by engines, 18000 available` for engines on the
    CPU and asleep; `#` is what the rest of the machine uses of the budget."""
    budget = max(ram["budget_mib"], 1)
    cells: list[str] = []
    legend = []
    for i, (name, mib) in enumerate(sorted(ram["models"].items())):
        letter = chr(ord("a") + i % 26)
        cells += [letter] * round(mib / budget * width)
        legend.append(f"{letter}={name}")
    # What the machine lacks beyond our own engines is someone else's (the OS, a desktop, a game).
    others = max(0, budget - ram["used_mib"] - ram["available_mib"])
    cells += ["#"] * round(others / budget * width)
    bar = "".join(cells[:width]).ljust(width, ".")
    line = (
        f"RAM   [{bar}] {ram['used_mib']}/{ram['budget_mib']} MiB held by engines, "
        f"{ram['available_mib']} available"
    )
    return line + (f"  {' '.join(legend)}" if legend else "")


@app.command()
def ps(url: UrlOpt = DEFAULT_URL) -> None:
    """Show every model's state as a table."""
    status = _call(url, "GET", "/gateway/status")
    rows: list[tuple[str, ...]] = [PS_COLUMNS]
    for m in status["models"]:
        rows.append(
            (
                m["name"],
                m["engine"],
                m["state"]
                + (f" ({m['host_mib']} MiB RAM)" if m.get("host_mib") is not None else "")
                + (" (pinned)" if m.get("pinned") else ""),
                (",".join(map(str, m.get("gpus") or ())) or _no_gpu(m))
                + (f"@{m['node']}" if m.get("node") else ""),
                _footprint(m),
                str(m["pid"] or "-"),
                str(m["port"] or "-"),
                _ago(m["ready_at"]) if m["state"] == "ready" else "-",
                _ago(m["last_used"]) if m["in_flight"] == 0 and m["state"] == "ready" else "-",
                f"{m['in_flight']}+{m['queued']}q" if m["queued"] else str(m["in_flight"]),
                str(m["starts"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    for gpu in status.get("gpus", []):
        on_it = [m for m in status["models"] if gpu["index"] in (m.get("gpus") or ())]
        typer.echo("\n" + gpu_bar(gpu, on_it))
    if status.get("host_ram"):
        typer.echo("\n" + host_bar(status["host_ram"]))
    if status.get("nodes"):
        typer.echo("")
        held = (status.get("host_ram") or {}).get("nodes", {})
        for n in status["nodes"]:
            state = "alive" if n["alive"] else f"dead ({n['why_dead']})"
            gpus = ",".join(map(str, n["gpus"])) or "-"
            ram = f"RAM {held.get(n['name'], 0)}/{n.get('host_budget_mib') or 0} MiB"
            typer.echo(f"node {n['name']} {n['address']} {state}  GPUs {gpus}  {ram}  engines: "
                       f"{', '.join(n['engines']) or '-'}")  # fmt: skip
    failed = [m for m in status["models"] if m["state"] == "failed" and m["last_error"]]
    for m in failed:
        typer.echo(f"\n{m['name']} failed: {m['last_error'].splitlines()[0]}")


@app.command()
def load(name: str, url: UrlOpt = DEFAULT_URL) -> None:
    """Start a model now and wait until it is ready."""
    m = _call(url, "POST", f"/admin/models/{name}/load")
    typer.echo(f"{m['name']}: {m['state']} (pid {m['pid']}, port {m['port']})")


@app.command()
def unload(name: str, url: UrlOpt = DEFAULT_URL) -> None:
    """Stop a model's engine now."""
    m = _call(url, "POST", f"/admin/models/{name}/unload")
    typer.echo(f"{m['name']}: {m['state']}")


@app.command()
def pull(
    repo: Annotated[str, typer.Argument(help="Hub repository id or URL (owner/name).")],
    quant: Annotated[
        str | None, typer.Option("--quant", "-q", help="GGUF quantization, e.g. Q4_K_M.")
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit.")] = None,
    include: Annotated[list[str] | None, typer.Option(help="Glob of files to fetch.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Glob of files to skip.")] = None,
    dest: Annotated[
        str | None, typer.Option(help="Folder inside models_dir (default: owner/name).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Download a model from the Hub into models_dir, with a progress bar (HF_TOKEN, HF_ENDPOINT
    apply). Ctrl-C stops it; running it again resumes."""
    from tqdm import tqdm

    from vramgate.downloads import DownloadError, Downloads

    settings = _load(config, [])
    downloads = Downloads(Path(settings.models_dir))
    try:
        job = downloads.create(repo, revision, include, exclude, quant, dest)
    except DownloadError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    names = ", ".join(f.path for f in job.files)
    typer.echo(f"{job.repo}@{job.revision[:12]}: {len(job.files)} file(s): {names}")
    bar = tqdm(total=job.bytes_total, unit="B", unit_scale=True, unit_divisor=1024)
    try:
        while job.state in ("queued", "running"):
            time.sleep(0.2)
            bar.update(job.bytes_done - bar.n)
    except KeyboardInterrupt:
        downloads.cancel(job.id)
        while job.state in ("queued", "running"):
            time.sleep(0.1)
    finally:
        bar.update(job.bytes_done - bar.n)
        bar.close()
        downloads.close()
    if job.state != "done":
        typer.echo(f"error: download {job.state}: {job.error or 'interrupted'}", err=True)
        raise typer.Exit(130 if job.state == "cancelled" else 1)
    typer.echo(f"saved to {job.destination}")


@app.command("config-schema")
def config_schema() -> None:
    """Print the JSON schema of the config file (for editors: yaml-language-server)."""
    schema = Settings.model_json_schema()
    schema["title"] = "vramgate configuration"
    typer.echo(json.dumps(schema, indent=2))
