"""What each engine holds in host RAM on the CPU, measured through vramgate: each model started
with `device: cpu`, asked once, then the RSS and PSS of its engine's process tree read, beside
vramgate's estimate before the first load and what it learned.

    python bench/host_ram.py [--out bench/results/host-ram.json]

Needs the models and engines scripts/setup.sh provides (VRAMGATE_CHAT_GGUF, VRAMGATE_DEFAULT_GGUF,
VRAMGATE_CHAT_HF, VRAMGATE_VLLM_BINARY, VRAMGATE_MINILM, the llama-server binary); a missing one
is left out of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from vramgate.gpu.proctree import process_table, process_tree, tree_rss_mib
from vramgate.hostram import tree_pss_mib
from vramgate.runtimes.local import free_port

VLLM_ARGS = ["--enforce-eager", "--dtype", "float32", "--max-model-len", "1024"]


def cases() -> dict[str, dict[str, Any]]:
    env = os.environ.get
    chat_gguf, gemma, chat_hf = (
        env("VRAMGATE_CHAT_GGUF"),
        env("VRAMGATE_DEFAULT_GGUF"),
        env("VRAMGATE_CHAT_HF"),
    )
    vllm_env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    found: dict[str, dict[str, Any]] = {}
    if chat_gguf:
        found["llamacpp smollm2"] = {
            "engine": "llamacpp",
            "source": chat_gguf,
            "args": ["-c", "2048"],
        }
    if gemma:
        found["llamacpp gemma3-270m"] = {
            "engine": "llamacpp",
            "source": gemma,
            "args": ["-c", "2048"],
        }
    if chat_hf:
        found["transformers smollm2"] = {"engine": "transformers", "source": chat_hf}
        found["transformers smollm2 +cb"] = {"engine": "transformers", "source": chat_hf,
                                             "args": ["--continuous-batching"]}  # fmt: skip
    if env("VRAMGATE_VLLM_BINARY") and chat_hf:
        found["vllm smollm2"] = {"engine": "vllm", "source": chat_hf, "args": VLLM_ARGS,
                                 "env": vllm_env}  # fmt: skip
    if env("VRAMGATE_VLLM_BINARY") and env("VRAMGATE_MINILM"):
        minilm = {"engine": "vllm", "source": env("VRAMGATE_MINILM"), "task": "embed",
                  "env": vllm_env, "args": ["--enforce-eager", "--dtype", "float32"]}  # fmt: skip
        found["vllm minilm (embed)"] = minilm
    return found


def measure(label: str, model: dict[str, Any], tmp: Path) -> dict[str, Any]:
    name = "m"
    config = {
        "state_dir": str(tmp / label.replace(" ", "_")),
        "log_level": "warning",
        "engines": {"vllm": {"binary": os.environ.get("VRAMGATE_VLLM_BINARY", "vllm")}},
        "models": {name: {**model, "device": "cpu", "start_timeout": 600}},
    }
    path = tmp / f"{label.replace(' ', '_')}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "vramgate", "serve", "-c", str(path), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=600) as http:
            for _ in range(300):
                try:
                    http.get("/health")
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            estimate = http.get("/gateway/status").json()["models"][0]
            began = time.monotonic()
            if model.get("task") == "embed":
                http.post("/v1/embeddings", json={"model": name, "input": ["Paris"]})
            else:
                ask = [{"role": "user", "content": "What is the capital of France?"}]
                body = {"model": name, "max_tokens": 8, "messages": ask}
                http.post("/v1/chat/completions", json=body)
            ready_s = time.monotonic() - began
            time.sleep(2)  # the learned figure is re-measured after the first requests
            status = http.get("/gateway/status").json()["models"][0]
            pid = status["pid"]
            table = process_table()
            return {
                "engine": label,
                "estimate_mib": estimate["ram_mib"],
                "learned_mib": status["ram_mib"],
                "rss_mib": tree_rss_mib([pid]),
                "pss_mib": tree_pss_mib([pid]),
                "processes": len(process_tree(pid, table)),
                "first_answer_s": round(ready_s, 2),
            }
    finally:
        gateway.terminate()
        gateway.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("bench/results/host-ram.json"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vramgate-host-ram-"))
    rows = []
    for label, model in cases().items():
        print(f"  {label} ...", file=sys.stderr)
        rows.append(measure(label, model, tmp))
    print(f"{'engine (device: cpu)':28} {'estimate':>9} {'learned':>8} {'RSS':>7} {'PSS':>7} "
          f"{'procs':>5} {'cold answer s':>13}")  # fmt: skip
    for r in rows:
        print(f"{r['engine']:28} {r['estimate_mib'] or '-':>9} {r['learned_mib']:>8} "
              f"{r['rss_mib']:>7} {r['pss_mib']:>7} {r['processes']:>5} "
              f"{r['first_answer_s']:>13}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"unit": "MiB", "results": rows}, indent=2))
    print(f"\nsaved {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
