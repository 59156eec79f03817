"""Reading a model's weights into the page cache ahead of its load: the kernel reads them (in the
background: posix_fadvise WILLNEED) while the engine it replaces is still stopping, so that the
load finds them in memory rather than on disk."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

WEIGHTS = ("*.gguf", "*.safetensors", "*.bin")


def model_files(source: str | None) -> list[Path]:
    """The weight files of a local model (a GGUF file, or a folder of weights); none for a hub
    id or a command engine."""
    if not source:
        return []
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(f for pattern in WEIGHTS for f in path.glob(pattern) if f.is_file())
    return []


def readahead(source: str | None) -> int:
    """Asks the kernel to read `source`'s weights; returns the bytes asked for. Never raises:
    a file it cannot open is the engine's to report."""
    asked = 0
    for path in model_files(source):
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                asked += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return asked
