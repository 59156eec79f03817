"""How a model split evenly over several GPUs (tensor parallel) divides its memory."""


def share_mib(footprint_mib: int, gpu_count: int) -> int:
    """What each of `gpu_count` GPUs holds of `footprint_mib` split evenly (rounded up)."""
    return -(-footprint_mib // max(gpu_count, 1))
