"""llama.cpp's logged buffer sizes as a measured footprint."""

from vramgate.gpu.estimate import PROCESS_OVERHEAD_MIB
from vramgate.gpu.logged import logged_buffers, logged_gpu_mib

# As llama-server prints them with CUDA (the format of its CPU lines, seen here at -lv 4, with
# the device name changed), and on the CPU as seen here for gemma 3 270M (two KV caches: global
# and sliding-window layers).
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
0.01.063.957 I load_tensors:   CPU_Mapped model buffer size =   235.16 MiB
0.01.064.001 I load_tensors:   CPU_REPACK model buffer size =    12.66 MiB
0.01.080.388 I llama_context:        CPU  output buffer size =     4.00 MiB
0.01.080.932 I llama_kv_cache:        CPU KV buffer size =    96.00 MiB
0.01.132.151 I llama_kv_cache:        CPU KV buffer size =    37.50 MiB
0.01.155.377 I sched_reserve:        CPU compute buffer size =    52.27 MiB
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
    every = logged_buffers(CPU_LOAD, gpu_only=False)
    assert every["CPU KV"] == 133.5  # both KV caches count
    assert every["CPU_Mapped model"] + every["CPU_REPACK model"] == 247.82


def test_two_gpus_and_two_kv_caches():
    lines = [
        "load_tensors:        CUDA0 model buffer size =   100.00 MiB",
        "load_tensors:        CUDA1 model buffer size =   100.00 MiB",
        "llama_kv_cache:      ROCm0 KV buffer size =    10.00 MiB",
        "llama_kv_cache:      ROCm0 KV buffer size =    20.00 MiB",
    ]
    assert logged_buffers(lines) == {"CUDA0 model": 100, "CUDA1 model": 100, "ROCm0 KV": 30}
