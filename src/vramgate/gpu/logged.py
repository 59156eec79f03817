"""GPU memory as llama.cpp logs it at load: a second measured source beside NVML.

llama.cpp (llama-server, and anything built on it) prints every buffer it allocates, per device:
    load_tensors:        CUDA0 model buffer size =   241.23 MiB
    llama_kv_cache:      CUDA0 KV buffer size =    12.00 MiB
    llama_context:       CUDA0 compute buffer size =   514.25 MiB
    llama_context:   CUDA_Host compute buffer size =     5.01 MiB
Device buffers (CUDA0, ROCm1, Vulkan0, SYCL0, Metal, ...) are GPU memory; CPU, CPU_Mapped and
*_Host ones are not. Their sum plus a process's CUDA context is what the engine holds, which
serves where NVML cannot attribute memory to a process (containers whose PIDs NVML does not see).
Each line is an allocation of its own: gemma 3 logs two KV buffers (global and sliding-window
layers), so lines of the same device and kind add up. llama-server of llama-cpp-python 0.3.36
prints these lines only at `-lv 4` (add it to the model's `args`; it also logs ~30 lines per
request, which is why vramgate does not add it by itself).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from vramgate.gpu.estimate import PROCESS_OVERHEAD_MIB

BUFFER_LINE = re.compile(
    r"\s(?P<device>[A-Za-z_]+\d*)\s+(?P<kind>model|KV|compute|output|RS|recurrent)"
    r"\s+buffer size\s*=\s*(?P<mib>\d+(?:\.\d+)?)\s*MiB"
)
GPU_DEVICE = re.compile(r"^(CUDA|ROCm|HIP|Vulkan|SYCL|Metal|MUSA|CANN|OpenCL)\d*$")


def logged_buffers(lines: Iterable[str], *, gpu_only: bool = True) -> dict[str, float]:
    """MiB per device and buffer kind, e.g. {'CUDA0 model': 241.23}, from an engine's output."""
    found: dict[str, float] = {}
    for line in lines:
        match = BUFFER_LINE.search(line)
        if match and (GPU_DEVICE.match(match["device"]) or not gpu_only):
            key = f"{match['device']} {match['kind']}"
            found[key] = found.get(key, 0.0) + float(match["mib"])
    return found


def logged_gpu_mib(lines: Iterable[str]) -> int | None:
    """What the logged GPU buffers and one CUDA context add up to; None if none was logged."""
    buffers = logged_buffers(lines)
    if not buffers:
        return None
    return round(sum(buffers.values())) + PROCESS_OVERHEAD_MIB
