"""llama.cpp's logged buffer sizes as a measured footprint."""

from vramgate.gpu.estimate import PROCESS_OVERHEAD_MIB
from vramgate.gpu.logged import logged_buffers, logged_gpu_mib

# As llama-server (llama.cpp b6xxx) prints them with CUDA, and on the CPU as seen here.
CUDA_LOAD = """\
load_tensors: offloading 18 repeating layers to GPU
load_tensors:        CUDA0 model buffer size =   241.23 MiB
load_tensors:   CPU_Mapped model buffer size =   170.00 MiB
llama_context:  CUDA_Host  output buffer size =     1.00 MiB
llama_kv_cache:      CUDA0 KV buffer size =    13.50 MiB
llama_context:      CUDA0 compute buffer size =   514.25 MiB
llama_context:  CUDA_Host compute buffer size =     5.01 MiB
""".splitlines()
CPU_LOAD = """\
load_tensors:   CPU_Mapped model buffer size =   241.23 MiB
llama_context:        CPU  output buffer size =     1.00 MiB
llama_kv_cache:        CPU KV buffer size =    13.50 MiB
llama_context:        CPU compute buffer size =   514.25 MiB
""".splitlines()


def test_gpu_buffers_are_summed_and_host_buffers_left_out():
    assert logged_buffers(CUDA_LOAD) == {
        "CUDA0 model": 241.23,
        "CUDA0 KV": 13.5,
        "CUDA0 compute": 514.25,
    }
    assert logged_gpu_mib(CUDA_LOAD) == 769 + PROCESS_OVERHEAD_MIB


def test_a_cpu_only_load_logs_no_gpu_memory():
    assert logged_gpu_mib(CPU_LOAD) is None
    assert logged_gpu_mib([]) is None


def test_two_gpus_and_a_relogged_buffer():
    lines = [
        "load_tensors:        CUDA0 model buffer size =   100.00 MiB",
        "load_tensors:        CUDA1 model buffer size =   100.00 MiB",
        "llama_kv_cache:      ROCm0 KV buffer size =    10.00 MiB",
        "llama_kv_cache:      ROCm0 KV buffer size =    20.00 MiB",
    ]
    assert logged_buffers(lines) == {"CUDA0 model": 100, "CUDA1 model": 100, "ROCm0 KV": 20}
