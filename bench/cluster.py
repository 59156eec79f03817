"""What placing engines on another node of a Ray cluster costs: the same fake engines behind a
gateway on one machine and behind a gateway whose engines run on a Ray node (reached through the
node agent's guard), in one run; plus a swap timed on each.

    python bench/cluster.py [--duration 6] [--out docs/results/cluster.json]

The cluster is a head and one worker node on this machine (loopback, simulated GPUs): what is
measured is the extra hop (the guard, a second process relaying bytes) and the agent's calls,
not a network. Load comes from wrk, as in bench/overhead.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from overhead import LUA, _median, get_json, wrk
from vramgate.runtimes.local import free_port
from vramgate.testing.ray_cluster import LocalRay

FAKE = f"{sys.executable} -m vramgate.testing.fake_engine --port ${{PORT}}"
CHAT = "/v1/chat/completions"


def body(model: str, tokens: int, stream: bool) -> str:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": tokens, "stream": stream})  # fmt: skip


def models(tokens_per_s: float, remote: bool) -> dict[str, Any]:
    where = {"nodes": ["remote"]} if remote else {}
    swap = f"{FAKE} --vram-mib 12000 --load-delay 0.5"
    return {
        "instant": {"engine": "command", "cmd": FAKE, "ttl": 0, **where},
        "paced": {"engine": "command", "cmd": f"{FAKE} --tokens-per-s {tokens_per_s}", "ttl": 0,
                  **where},
        "swap-a": {"engine": "command", "cmd": swap, "vram_mib": 12000, **where},
        "swap-b": {"engine": "command", "cmd": swap, "vram_mib": 12000, **where},
    }  # fmt: skip


class Gateway:
    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        tmp.mkdir(parents=True)
        (tmp / "vramgate.yaml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vramgate", "serve", "-c", str(tmp / "vramgate.yaml"),
             "--port", port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(600):
            try:
                get_json(self.url + "/health")
                break
            except OSError:
                time.sleep(0.1)

    def load(self, name: str) -> None:
        request = urllib.request.Request(f"{self.url}/admin/models/{name}/load", method="POST")
        urllib.request.urlopen(request, timeout=120).read()

    def post(self, model: str) -> float:
        request = urllib.request.Request(
            self.url + CHAT, data=body(model, 1, False).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        began = time.perf_counter()
        urllib.request.urlopen(request, timeout=120).read()
        return time.perf_counter() - began

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=6, help="Seconds per wrk run.")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--swaps", type=int, default=8)
    parser.add_argument("--stream-tokens", type=int, default=32)
    parser.add_argument("--stream-tokens-per-s", type=float, default=50.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cluster.json"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench/cluster.py needs wrk: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="vgbench-", dir="/tmp"))
    script = tmp / "post.lua"
    script.write_text(LUA)
    cluster = LocalRay(tmp)
    gateways: dict[str, Gateway] = {}
    runs: list[dict[str, Any]] = []
    swaps: dict[str, list[float]] = {}
    try:
        cluster.head()
        cluster.add("remote", "20000")
        base = {"log_level": "warning", "gpus": {"reserve_mib": 0}}
        local = {
            **base,
            "state_dir": str(tmp / "local"),
            "gpus": {"reserve_mib": 0, "simulate_mib": [20000]},
            "models": models(args.stream_tokens_per_s, False),
        }
        remote = {**base, "state_dir": str(tmp / "remote"), "models":
                  models(args.stream_tokens_per_s, True),
                  "cluster": {"ray": {"address": cluster.address}}}  # fmt: skip
        gateways = {"local": Gateway(tmp / "gl", local), "node": Gateway(tmp / "gr", remote)}
        for gw in gateways.values():
            for name in ("instant", "paced"):
                gw.load(name)
        cases = [("instant", 1, False), ("instant", 32, False), ("paced", 32, True)]
        for model, concurrency, stream in cases:
            tokens = args.stream_tokens if stream else 16
            results: dict[str, list[dict[str, Any]]] = {t: [] for t in gateways}
            for _ in range(args.repeat):  # alternating: a slow spell hits both alike
                for where, gw in gateways.items():
                    got = wrk(gw.url + CHAT, body(model, tokens, stream), concurrency,
                              args.duration, script, None)  # fmt: skip
                    results[where].append(got)
                    print(f"  {model:8} {where:6} c={concurrency:<3} {got}", file=sys.stderr)
            for where, rs in results.items():
                run = {"case": model, "where": where, "concurrency": concurrency, **_median(rs)}
                if stream:
                    run["tokens_per_s"] = round(run["requests_per_s"] * tokens, 1)
                runs.append(run)
        for where, gw in gateways.items():
            gw.post("swap-a")
            timed = []
            for i in range(args.swaps):  # each request finds the other loaded: a swap
                timed.append(gw.post("swap-b" if i % 2 == 0 else "swap-a"))
            swaps[where] = timed
            print(f"  swap {where}: {[round(t, 3) for t in timed]}", file=sys.stderr)
    finally:
        for gw in gateways.values():
            gw.stop()
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(runs, swaps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": vars(args) | {"out": str(args.out)},
        "runs": runs,
        "swaps_s": swaps,
    }, indent=2))  # fmt: skip
    print(f"\nsaved {args.out}")


def print_table(runs: list[dict[str, Any]], swaps: dict[str, list[float]]) -> None:
    print(f"{'case':8} {'conc':>4} {'where':6} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'tokens/s':>9}")  # fmt: skip
    for r in runs:
        tokens = f"{r['tokens_per_s']:9.1f}" if "tokens_per_s" in r else f"{'':9}"
        print(f"{r['case']:8} {r['concurrency']:>4} {r['where']:6} {r['requests_per_s']:9.1f} "
              f"{r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {tokens}")  # fmt: skip
    for where, timed in swaps.items():
        print(f"swap ({where}): median {statistics.median(timed):.3f} s over {len(timed)}")


if __name__ == "__main__":
    main()
