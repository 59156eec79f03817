"""GPU memory accounting in MiB: simulated GPUs, learned footprints, placement inputs."""
