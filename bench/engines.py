"""One model through two engines on the CPU, in one run: load time and tokens/s of a GGUF through
llama-server and of the same model, converted to safetensors, through `transformers serve`.

    python -m bench.engines [--gguf FILE] [--runs 3] [--tokens 64] [--out FILE.json]

Defaults to gemma 3 270M (VRAMGATE_DEFAULT_GGUF, from scripts/setup.sh); its safetensors folder
is made once next to it (scripts/gguf-to-safetensors.py, bfloat16). Both models are served by
one gateway with `device: cpu` and `max_running: 1`, so each engine has the two cores to itself.
Load time is the gateway's own "ready in" (spawn to the first 200 on /health); tokens/s is the
completion tokens of a non-streamed request over its wall time, the median of --runs requests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from bench.gateway import running_gateway

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Once upon a time, in a small village by the sea,"


def hf_folder(gguf: Path) -> Path:
    out = gguf.with_name(gguf.stem + "-hf")
    script = ROOT / "scripts" / "gguf-to-safetensors.py"
    subprocess.run([sys.executable, str(script), str(gguf), str(out)], check=True)
    return out


def measure(http: httpx.Client, model: str, runs: int, tokens: int) -> dict[str, Any]:
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0}
    began = time.perf_counter()
    first = http.post("/v1/completions", json=body)  # cold: starts the engine
    first.raise_for_status()
    cold_s = time.perf_counter() - began
    status = next(m for m in http.get("/gateway/status").json()["models"] if m["name"] == model)
    load_s = status["ready_at"] - status["started_at"]
    rates = []
    for _ in range(runs):
        began = time.perf_counter()
        reply = http.post("/v1/completions", json=body)
        reply.raise_for_status()
        took = time.perf_counter() - began
        rates.append(reply.json()["usage"]["completion_tokens"] / took)
    return {"model": model, "load_s": round(load_s, 2), "first_request_s": round(cold_s, 2),
            "tokens_per_s": round(statistics.median(rates), 1),
            "tokens_per_s_runs": [round(r, 1) for r in rates]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gguf", default=os.environ.get("VRAMGATE_DEFAULT_GGUF"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "engines.json"))
    args = parser.parse_args()
    if not args.gguf:
        sys.exit("no GGUF: pass --gguf or source scripts/setup.sh")
    gguf = Path(args.gguf).resolve()
    folder = hf_folder(gguf)
    models = {
        "llamacpp": {"engine": "llamacpp", "source": str(gguf), "device": "cpu"},
        "transformers": {"engine": "transformers", "source": str(folder), "device": "cpu"},
    }
    with running_gateway(models, max_running=1) as http:
        rows = [measure(http, name, args.runs, args.tokens) for name in models]
    print(f"{'engine':<14}{'load s':>8}{'first request s':>17}{'tokens/s':>10}")
    for row in rows:
        print(f"{row['model']:<14}{row['load_s']:>8}{row['first_request_s']:>17}"
              f"{row['tokens_per_s']:>10}")  # fmt: skip
    result = {"gguf": str(gguf), "tokens": args.tokens, "runs": args.runs, "rows": rows,
              "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpus": os.cpu_count()}  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
