"""What the gateway adds: the same fake engine reached directly and through vramgate, in one run.

    python bench/overhead.py [--duration 8] [--out bench/results/overhead.json]

Load comes from wrk (Debian's `wrk`), a C load generator light enough not to crowd the gateway
off the two cores. The gateway starts the fake engine itself; we reach that very process both
directly (its port from /gateway/status) and through the gateway, so the only difference is us.
nginx (where installed: `apt-get install nginx-light`), one worker process as the gateway is one
process, proxies to the same engines with kept-alive upstream connections: the reference proxy,
measured in the same run (`--no-nginx` leaves it out). Each target gets a 1 s warm-up run, not
counted; `gw cpu us` is the gateway's own CPU (user + system) per request, from /proc.
Streams are paced by the engine (--stream-tokens-per-s per stream); streamed tokens/s is the
completed streams per second times tokens per stream (every chunk is relayed, as tests check).

Besides OpenAI's chat completions, the other client APIs in the same run: Anthropic's
/v1/messages relayed (the fake engine serves it) and translated (one that does not), and
Ollama's /api/chat (always translated). A translated case's direct run is the engine's own
/v1/chat/completions, which is what the gateway sends it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from vramgate.runtimes.local import free_port

SOCKET_ERRORS = r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY")
"""


@dataclass(frozen=True)
class Case:
    """One kind of request: what the gateway is sent, and its direct counterpart."""

    label: str
    model: str
    path: str  # the gateway's route
    body: str
    direct_path: str  # the engine's route the gateway relays or translates to
    direct_body: str
    streamed: bool = False


def cases(stream_tokens: int, apis: bool) -> list[Case]:
    """OpenAI's chat completions (instant, short, streamed); with `apis`, the same requests
    through Anthropic's and Ollama's routes."""
    chat = "/v1/chat/completions"
    user = [{"role": "user", "content": "hi"}]

    def openai(model: str, tokens: int, stream: bool) -> str:
        """A chat completions body; the same fields make an Anthropic Messages body."""
        return json.dumps({"model": model, "messages": user, "max_tokens": tokens,
                           "stream": stream})  # fmt: skip

    anthropic = openai

    def ollama(model: str, tokens: int, stream: bool) -> str:
        return json.dumps({"model": model, "messages": user, "stream": stream,
                           "options": {"num_predict": tokens}})  # fmt: skip

    found = [
        Case("instant", "instant", chat, openai("instant", 16, False), chat,
             openai("instant", 16, False)),
        Case("short", "short", chat, openai("short", 16, False), chat,
             openai("short", 16, False)),
        Case("paced", "paced", chat, openai("paced", stream_tokens, True), chat,
             openai("paced", stream_tokens, True), streamed=True),
    ]  # fmt: skip
    if not apis:
        return found
    messages = "/v1/messages"
    return [
        *found,
        Case("msg-relayed", "instant", messages, anthropic("instant", 16, False), messages,
             anthropic("instant", 16, False)),
        Case("msg-translated", "instant-tr", messages, anthropic("instant-tr", 16, False), chat,
             openai("instant-tr", 16, False)),
        Case("ollama-chat", "instant-tr", "/api/chat", ollama("instant-tr", 16, False), chat,
             openai("instant-tr", 16, False)),
        Case("msg-relayed-s", "paced", messages, anthropic("paced", stream_tokens, True),
             messages, anthropic("paced", stream_tokens, True), streamed=True),
        Case("msg-transl-s", "paced-tr", messages, anthropic("paced-tr", stream_tokens, True),
             chat, openai("paced-tr", stream_tokens, True), streamed=True),
        Case("ollama-chat-s", "paced-tr", "/api/chat", ollama("paced-tr", stream_tokens, True),
             chat, openai("paced-tr", stream_tokens, True), streamed=True),
    ]  # fmt: skip


@dataclass
class Run:
    mode: str  # instant | short (non-streamed) | paced (streamed)
    target: str  # direct | gateway | nginx
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int  # summed over the repeats
    cpu_us_per_request: float | None  # the proxy's own CPU (user + system); None: direct


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(
    url: str, body: str, concurrency: int, duration_s: int, script: Path, cpus: str | None
) -> dict[str, Any]:
    threads = 1 if concurrency < 32 else 2
    pin = ["taskset", "-c", cpus] if cpus else []
    out = subprocess.run(
        [*pin, "wrk", f"-t{threads}", f"-c{concurrency}", f"-d{duration_s}s", "--latency", "-s",
         str(script), "--timeout", "30s", url],
        capture_output=True, text=True, env={**os.environ, "BENCH_BODY": body}, check=True,
    ).stdout  # fmt: skip
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(SOCKET_ERRORS, out)
    if not (p50 and p99 and rps and total):
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    failed = int(errors.group(1)) if errors else 0
    if socket_errors:
        failed += sum(int(g) for g in socket_errors.groups())
    return {
        "requests_per_s": float(rps.group(1)),
        "p50_ms": _ms(p50.group(1)),
        "p99_ms": _ms(p99.group(1)),
        "errors": failed,
        "requests": int(total.group(1)),
    }


def cpu_s(pids: list[int]) -> float:
    """User and system CPU seconds these processes have used."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        used += int(fields[11]) + int(fields[12])  # utime, stime
    return used / ticks


def _place(served: list[int], concurrency: int, pin_latency: bool) -> str | None:
    """CPUs for wrk; at concurrency 1 the served processes share one core and wrk another.

    At concurrency 1 every request is a ping-pong between processes, and on this 2-core VM its
    latency flips between two modes (about 0.8 and 2.2 ms through the gateway, same code) by
    which vCPU each wakes on. Pinning measures the software, not that lottery; direct and
    gateway are pinned alike. Under load nothing is pinned.
    """
    cpus = sorted(os.sched_getaffinity(0))
    pinned = pin_latency and concurrency == 1 and len(cpus) >= 2
    for pid in served:
        os.sched_setaffinity(pid, {cpus[0]} if pinned else set(cpus))
    return str(cpus[1]) if pinned else None


def _median(results: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k in results[0] if k not in ("errors", "cpu_us_per_request")]
    med = {k: statistics.median(r[k] for r in results) for k in keys}
    cpu = [r["cpu_us_per_request"] for r in results if r["cpu_us_per_request"] is not None]
    return med | {
        "errors": sum(r["errors"] for r in results),
        "cpu_us_per_request": statistics.median(cpu) if cpu else None,
    }


NGINX = """
daemon off;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
{servers}
}}
"""
NGINX_SERVER = """
    upstream engine_{port} {{ server 127.0.0.1:{port}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://engine_{port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}"""


def start_nginx(tmp: Path, engine_ports: list[int], workers: int) -> tuple[subprocess.Popen, dict]:
    """nginx in front of each engine port; returns it and {engine port: nginx port}."""
    listen = {port: free_port() for port in engine_ports}
    servers = "".join(NGINX_SERVER.format(port=p, listen=listen[p]) for p in engine_ports)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX.format(workers=workers, tmp=tmp, servers=servers))
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for port in listen.values():
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            proc.kill()
            raise RuntimeError(f"nginx did not start: {(tmp / 'nginx-error.log').read_text()}")
    return proc, listen


def nginx_pids(master: int) -> list[int]:
    """nginx's master and its workers (pinned alike with the rest of what is served)."""
    children = Path(f"/proc/{master}/task/{master}/children")
    found = children.read_text().split() if children.exists() else []
    return [master, *(int(pid) for pid in found)]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=6, help="Seconds per wrk run.")
    parser.add_argument(
        "--repeat", type=int, default=3, help="Runs of each case, alternating; medians reported."
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--engine-latency-ms", type=float, default=20.0)
    parser.add_argument(
        "--no-pin-latency", dest="pin_latency", action="store_false",
        help="Do not pin processes for the concurrency-1 latency runs.",
    )  # fmt: skip
    parser.add_argument("--stream-tokens", type=int, default=32)
    parser.add_argument("--stream-tokens-per-s", type=float, default=50.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/overhead.json"))
    parser.add_argument(
        "--apis", action="store_true", help="Also Anthropic's and Ollama's routes (same run)."
    )
    parser.add_argument(
        "--no-nginx", dest="nginx", action="store_false", help="Leave nginx out of the run."
    )
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument(
        "--cases", nargs="+", default=None, help="Only these cases (labels in the table)."
    )
    args = parser.parse_args()
    if args.cases is None:
        args.cases = [c.label for c in cases(args.stream_tokens, args.apis)]
    if not shutil.which("wrk"):
        sys.exit("bench/overhead.py needs wrk: apt-get install wrk")

    tmp = Path(tempfile.mkdtemp(prefix="vramgate-bench-"))
    script = tmp / "post.lua"
    script.write_text(LUA)
    fake = f"{sys.executable} -m vramgate.testing.fake_engine --port ${{PORT}}"
    config = {
        "state_dir": str(tmp / "state"),
        "log_level": "warning",
        "models": {
            # Answers at once: what is measured is the gateway's own cost, nothing else.
            "instant": {"engine": "command", "cmd": fake, "ttl": 0},
            # Answers after --engine-latency-ms, as a short completion on a GPU would.
            "short": {
                "engine": "command",
                "cmd": f"{fake} --latency-ms {args.engine_latency_ms}",
                "ttl": 0,
            },
            "paced": {
                "engine": "command",
                "cmd": f"{fake} --tokens-per-s {args.stream_tokens_per_s}",
                "ttl": 0,
                "native_apis": ["anthropic"],
            },
            # The same two as engines without /v1/messages: the gateway translates.
            "instant-tr": {"engine": "command", "cmd": f"{fake} --no-messages", "ttl": 0},
            "paced-tr": {
                "engine": "command",
                "cmd": f"{fake} --no-messages --tokens-per-s {args.stream_tokens_per_s}",
                "ttl": 0,
            },
        },
    }
    config["models"]["instant"]["native_apis"] = ["anthropic"]
    for model in config["models"].values():
        # Sized: all run at once (device: auto runs an unsized engine alone, a discovery run).
        model["ram_mib"] = 120
    (tmp / "vramgate.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "vramgate", "serve", "-c", str(tmp / "vramgate.yaml"),
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    nginx: subprocess.Popen | None = None
    proxied: dict[int, int] = {}
    try:
        for _ in range(300):
            try:
                get_json(base + "/health")
                break
            except OSError:
                time.sleep(0.1)
        for name in config["models"]:
            urllib.request.urlopen(
                urllib.request.Request(f"{base}/admin/models/{name}/load", method="POST"),
                timeout=60,
            ).read()
        models = get_json(base + "/gateway/status")["models"]
        ports = {m["name"]: m["port"] for m in models}
        served = [gateway.pid, *(m["pid"] for m in models)]
        proxies = {"gateway": [gateway.pid]}
        if args.nginx and shutil.which("nginx"):
            nginx, proxied = start_nginx(tmp, sorted(set(ports.values())), args.nginx_workers)
            proxies["nginx"] = nginx_pids(nginx.pid)
            served += proxies["nginx"]
        elif args.nginx:
            print("nginx not found (apt-get install nginx-light): left out", file=sys.stderr)
        runs = []
        for case in cases(args.stream_tokens, args.apis):
            if case.label not in args.cases:
                continue
            for concurrency in args.concurrency:
                wrk_cpus = _place(served, concurrency, args.pin_latency)
                direct = f"http://127.0.0.1:{ports[case.model]}{case.direct_path}"
                targets = {
                    "direct": (direct, case.direct_body),
                    "gateway": (base + case.path, case.body),
                }
                if nginx is not None and case.path == case.direct_path:  # relayed as it is
                    via = f"http://127.0.0.1:{proxied[ports[case.model]]}{case.direct_path}"
                    targets["nginx"] = (via, case.direct_body)
                results: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
                # Alternate direct and gateway runs so that a slow spell of this shared VM hits
                # both alike; medians of the repeats are what is reported.
                for url, body in targets.values():  # a warm-up run of each, not counted
                    wrk(url, body, concurrency, 1, script, wrk_cpus)
                for _ in range(args.repeat):
                    for target, (url, body) in targets.items():
                        pids = proxies.get(target, [])
                        before = cpu_s(pids)
                        result = wrk(url, body, concurrency, args.duration, script, wrk_cpus)
                        used = cpu_s(pids) - before
                        result["cpu_us_per_request"] = (
                            round(used * 1e6 / max(result["requests"], 1), 1) if pids else None
                        )
                        del result["requests"]
                        results[target].append(result)
                        print(
                            f"  {case.label:14} {target:7} c={concurrency:<4} {result}",
                            file=sys.stderr,
                        )
                for target, rs in results.items():
                    runs.append(Run(case.label, target, concurrency, **_median(rs)))
    finally:
        gateway.terminate()
        gateway.wait(30)
        if nginx is not None:
            nginx.terminate()
            nginx.wait(30)

    summary = summarize(runs, args.stream_tokens)
    print_table(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                "settings": vars(args) | {"out": str(args.out)},
                "runs": [asdict(r) for r in runs],
                "summary": summary,
            },
            indent=2,
        )
    )
    print(f"\nsaved {args.out}")


def summarize(runs: list[Run], stream_tokens: int) -> list[dict[str, Any]]:
    rows = []
    for mode in dict.fromkeys(r.mode for r in runs):
        for c in sorted({r.concurrency for r in runs}):
            d = _find(runs, mode, "direct", c)
            g = _find(runs, mode, "gateway", c)
            row: dict[str, Any] = {
                "mode": mode,
                "concurrency": c,
                "direct_rps": d.requests_per_s,
                "gateway_rps": g.requests_per_s,
                "throughput_ratio": round(g.requests_per_s / d.requests_per_s, 3),
                "direct_p50_ms": d.p50_ms,
                "gateway_p50_ms": g.p50_ms,
                "added_p50_ms": round(g.p50_ms - d.p50_ms, 3),
                "added_p99_ms": round(g.p99_ms - d.p99_ms, 3),
                "errors": d.errors + g.errors,
            }
            row["gateway_cpu_us"] = g.cpu_us_per_request
            n = _find_any(runs, mode, "nginx", c)
            row["nginx_cpu_us"] = n.cpu_us_per_request if n else None
            row["nginx_ratio"] = round(n.requests_per_s / d.requests_per_s, 3) if n else None
            row["nginx_added_p50_ms"] = round(n.p50_ms - d.p50_ms, 3) if n else None
            if n:
                row["errors"] += n.errors
            if mode == "paced" or mode.endswith("-s"):
                row["direct_tokens_per_s"] = round(d.requests_per_s * stream_tokens, 1)
                row["gateway_tokens_per_s"] = round(g.requests_per_s * stream_tokens, 1)
            rows.append(row)
    return rows


def _find(runs: list[Run], mode: str, target: str, concurrency: int) -> Run:
    found = _find_any(runs, mode, target, concurrency)
    assert found is not None, (mode, target, concurrency)
    return found


def _find_any(runs: list[Run], mode: str, target: str, concurrency: int) -> Run | None:
    key = (mode, target, concurrency)
    return next((r for r in runs if (r.mode, r.target, r.concurrency) == key), None)


def _cell(fmt: str, value: Any) -> str:
    """A value in its column; a case nginx did not run (translated) shows a dash."""
    if value is None:
        return f"{'-':>{len(fmt.format(0))}}"
    return fmt.format(value)


def print_table(summary: list[dict[str, Any]]) -> None:
    columns = [
        ("mode", "mode", "{:14}"),
        ("conc", "concurrency", "{:>5}"),
        ("direct rps", "direct_rps", "{:>10.1f}"),
        ("gw rps", "gateway_rps", "{:>9.1f}"),
        ("ratio", "throughput_ratio", "{:>6.3f}"),
        ("d p50 ms", "direct_p50_ms", "{:>9.2f}"),
        ("gw p50 ms", "gateway_p50_ms", "{:>9.2f}"),
        ("+p50 ms", "added_p50_ms", "{:>8.3f}"),
        ("+p99 ms", "added_p99_ms", "{:>9.3f}"),
        ("gw cpu us", "gateway_cpu_us", "{:>9.1f}"),
        ("nginx", "nginx_ratio", "{:>6.3f}"),
        ("ng +p50", "nginx_added_p50_ms", "{:>8.3f}"),
        ("ng cpu us", "nginx_cpu_us", "{:>9.1f}"),
        ("errors", "errors", "{:>6}"),
    ]
    print(
        " ".join(
            f"{title:>{len(fmt.format(0)) if title != 'mode' else 14}}" for title, _, fmt in columns
        )
    )
    for row in summary:
        print(" ".join(_cell(fmt, row[key]) for _, key, fmt in columns))
    for row in summary:
        if "gateway_tokens_per_s" in row:
            print(
                f"streamed tokens/s at {row['concurrency']} streams: direct "
                f"{row['direct_tokens_per_s']}, gateway {row['gateway_tokens_per_s']} "
                f"(ratio {row['throughput_ratio']})"
            )


if __name__ == "__main__":
    main()
