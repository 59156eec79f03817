"""File names made from model names (engine logs, KV folders, simulated GPU usage files): one
plain component per name, different for different names, and short enough for any file system."""

from __future__ import annotations

import hashlib
from urllib.parse import quote

MAX_STEM_BYTES = 160  # file systems allow 255 bytes a component; room left for a suffix


def file_stem(name: str) -> str:
    """`name` as one file name component: percent-encoded (so `a/b` and `a--b` stay apart and
    `..` leads nowhere), a long one cut and told apart by a hash of the whole."""
    stem = quote(name, safe="@+,=")
    if stem.startswith("."):
        stem = "%2E" + stem[1:]
    if len(stem) > MAX_STEM_BYTES:  # quote leaves only ASCII: characters are bytes
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        stem = f"{stem[: MAX_STEM_BYTES - 17]}~{digest}"
    return stem or "%00"
