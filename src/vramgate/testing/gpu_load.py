"""Real GPU memory for the fake engine, with PyTorch: for checks on a machine with a GPU.

`--cuda-alloc-mib N` allocates N MiB in the engine itself; `--worker-cuda-alloc-mib N` in a child
process (vLLM and SGLang hold memory in workers: the gateway must sum the whole process tree);
`--load-safetensors DIR` loads a safetensors model onto the GPU and allocates a KV cache for
`--kv-context` tokens from its config.json, as a small PyTorch server does. PyTorch is imported
only when one of these is asked for.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

MIB = 1 << 20
WORKER = """
import sys, time, torch
held = torch.empty(int(sys.argv[1]) * (1 << 20), dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("fake engine worker: holding", sys.argv[1], "MiB", flush=True)
time.sleep(1 << 30)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cuda-alloc-mib", type=int, default=0, help="Really allocate on the GPU.")
    p.add_argument(
        "--worker-cuda-alloc-mib", type=int, default=0, help="Allocate in a child process."
    )
    p.add_argument("--load-safetensors", type=Path, default=None, help="Load a model's weights.")
    p.add_argument("--kv-context", type=int, default=2048, help="Tokens of KV cache to allocate.")


def allocate(opts: argparse.Namespace) -> list[Any]:
    """What the engine must keep referenced for the memory to stay held."""
    held: list[Any] = []
    if opts.worker_cuda_alloc_mib:
        worker = [sys.executable, "-c", WORKER, str(opts.worker_cuda_alloc_mib)]
        held.append(subprocess.Popen(worker))
    if not (opts.cuda_alloc_mib or opts.load_safetensors):
        return held
    import torch  # pyright: ignore[reportMissingImports]  (only on GPU machines)

    if opts.cuda_alloc_mib:
        held.append(torch.empty(opts.cuda_alloc_mib * MIB, dtype=torch.uint8, device="cuda"))
    if opts.load_safetensors:
        from safetensors.torch import load_file  # pyright: ignore[reportMissingImports]

        for path in sorted(Path(opts.load_safetensors).glob("*.safetensors")):
            held.append(load_file(str(path), device="cuda"))
        config = json.loads((Path(opts.load_safetensors) / "config.json").read_text())
        cfg = config.get("text_config", config)
        heads = int(cfg.get("num_attention_heads", 1))
        kv_heads = int(cfg.get("num_key_value_heads", heads))
        head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
        shape = (2, int(cfg["num_hidden_layers"]), opts.kv_context, kv_heads, head_dim)
        held.append(torch.empty(shape, dtype=torch.bfloat16, device="cuda"))
    torch.cuda.synchronize()
    print(f"fake engine: holding {torch.cuda.memory_allocated() // MIB} MiB on the GPU", flush=True)
    return held
