"""The GPU memory issue's checks on a real GPU (not in CI; needs NVML and PyTorch with CUDA).

    VRAMGATE_LLAMA_CUDA=on scripts/build-llama-server.sh    # llama-server with CUDA
    python bench/gpu_check.py [--llama-server PATH] [--gguf PATH]

Starts a gateway on the GPU (NVML accounting, no simulation) and loads, one at a time:
- `alloc`: the fake engine allocating 2000 MiB with PyTorch in its own process;
- `worker`: the fake engine whose child process allocates 1500 MiB (a process tree, as vLLM's);
- `safetensors`: a 1 GiB safetensors model of our making, loaded by the fake engine with a KV
  cache for 8192 tokens (a small PyTorch server), against vramgate's safetensors estimate;
- `gemma-2k`, `gemma-32k`: gemma 3 270M on CUDA llama-server at -c 2048 and 32768 (-lv 4), against
  the GGUF estimate and the CUDA buffers llama-server logs.
For each: what NVML shows for the engine's process tree, the estimate and its error, the logged
buffers, how long the unload took (the gateway returns once NVML lists none of its processes)
and what is left on the GPU afterwards. Prints a table, saves bench/results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from vramgate.config import ModelConfig
from vramgate.gpu.estimate import estimate_model, estimate_safetensors
from vramgate.gpu.logged import logged_gpu_mib
from vramgate.gpu.nvml import nvml_available
from vramgate.runtimes.local import free_port

FAKE = f"{sys.executable} -m vramgate.testing.fake_engine --port ${{PORT}}"


def write_model(folder: Path, layers: int = 32) -> None:
    """1 GiB of BF16 weights (32 tensors of 2048 x 8192) and a config.json for the KV cache."""
    folder.mkdir(parents=True, exist_ok=True)
    header, offset = {}, 0
    for i in range(layers):
        size = 2048 * 8192 * 2
        header[f"layers.{i}.w"] = {"dtype": "BF16", "shape": [2048, 8192],
                                   "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    raw = json.dumps(header).encode()
    with (folder / "model.safetensors").open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    config = {
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_size": 2048,
        "max_position_embeddings": 8192,
        "torch_dtype": "bfloat16",
    }
    (folder / "config.json").write_text(json.dumps(config))


def call(url: str, method: str = "GET") -> dict[str, Any]:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def gpu_used_mib() -> int:
    import pynvml

    pynvml.nvmlInit()
    info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
    return int(info.used) // (1 << 20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--llama-server", default=os.environ.get("VRAMGATE_ENGINES__LLAMACPP__BINARY"))
    p.add_argument("--gguf", default=os.environ.get("VRAMGATE_DEFAULT_GGUF"))
    p.add_argument("--out", type=Path, default=Path("bench/results/gpu_check.json"))
    args = p.parse_args()
    if not nvml_available():
        sys.exit("gpu_check: needs an NVIDIA GPU that NVML sees (this machine has none)")
    work = Path(tempfile.mkdtemp(prefix="vramgate-gpu-check-"))
    write_model(work / "model")
    models: dict[str, dict[str, Any]] = {
        "alloc": {"engine": "command", "cmd": f"{FAKE} --cuda-alloc-mib 2000"},
        "worker": {"engine": "command", "cmd": f"{FAKE} --worker-cuda-alloc-mib 1500"},
        "safetensors": {
            "engine": "command",
            "cmd": f"{FAKE} --load-safetensors {work / 'model'} --kv-context 8192",
        },
    }
    expected = {"alloc": 2000, "worker": 1500}
    estimates: dict[str, float] = {
        "safetensors": estimate_safetensors(work / "model", ["--max-model-len", "8192"]).total_mib
    }
    if args.gguf and args.llama_server:
        for ctx in (2048, 32768):
            name = f"gemma-{ctx // 1024}k"
            cfg = {"engine": "llamacpp", "source": args.gguf,
                   "args": ["-c", str(ctx), "-ngl", "99", "-lv", "4"]}  # fmt: skip
            models[name] = cfg
            found = estimate_model(ModelConfig.model_validate(cfg))
            if found is not None:
                estimates[name] = found.total_mib
    else:
        print("gemma rows skipped: give --llama-server (CUDA build) and --gguf", file=sys.stderr)
    config = {"state_dir": str(work / "state"), "gpus": {"reserve_mib": 512}, "models": models}
    if args.llama_server:
        config["engines"] = {"llamacpp": {"binary": args.llama_server}}
    (work / "vramgate.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "VRAMGATE_ENGINES__LLAMACPP__BINARY"}
    gateway = subprocess.Popen(
        [sys.executable, "-m", "vramgate", "serve", "--config", str(work / "vramgate.yaml"),
         "--port", str(port)], env=env,
    )  # fmt: skip
    rows = []
    try:
        for _ in range(100):
            try:
                call(f"{url}/health")
                break
            except OSError:
                time.sleep(0.1)
        baseline = gpu_used_mib()
        for name in models:
            began = time.monotonic()
            call(f"{url}/admin/models/{name}/load", "POST")
            load_s = time.monotonic() - began
            time.sleep(1.0)  # let allocators settle
            status = next(m for m in call(f"{url}/gateway/status")["models"] if m["name"] == name)
            log = (work / "state" / "logs" / f"{name}.log").read_text(errors="replace")
            began = time.monotonic()
            call(f"{url}/admin/models/{name}/unload", "POST")
            unload_s = time.monotonic() - began
            measured = status["used_mib"]
            estimate = estimates.get(name)
            error = round(estimate / measured - 1, 4) if estimate and measured else None
            rows.append({
                "model": name,
                "load_s": round(load_s, 2),
                "nvml_tree_mib": measured,
                "allocated_mib": expected.get(name),
                "estimate_mib": estimate,
                "estimate_error": error,
                "logged_mib": logged_gpu_mib(log.splitlines()),
                "unload_s": round(unload_s, 3),
                "left_after_unload_mib": gpu_used_mib() - baseline,
            })  # fmt: skip
    finally:
        gateway.terminate()
        gateway.wait(60)
    header = ("model", "NVML tree", "allocated", "estimate", "error", "logged", "unload s", "left")
    print("{:12} {:>9} {:>9} {:>8} {:>7} {:>7} {:>8} {:>5}".format(*header))
    for r in rows:
        error = "-" if r["estimate_error"] is None else f"{r['estimate_error']:+.1%}"
        print(f"{r['model']:12} {r['nvml_tree_mib'] or '-':>9} {r['allocated_mib'] or '-':>9} "
              f"{r['estimate_mib'] or '-':>8} {error:>7} {r['logged_mib'] or '-':>7} "
              f"{r['unload_s']:>8} {r['left_after_unload_mib']:>5}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"gpu": shutil.which("nvidia-smi"), "rows": rows}, indent=2))
    print(f"\nsaved {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
