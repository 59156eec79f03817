"""Makes a Hugging Face folder (safetensors, config, tokenizer) from a GGUF file, for the
Transformers engine: `transformers serve` cannot serve a GGUF path.

Transformers loads the GGUF (dequantizing it), the quantization note is dropped (else
save_pretrained refuses), and the weights are saved in bfloat16. The folder is written next to
its final place and renamed into it, and kept while the GGUF's size and mtime match its stamp:

    python scripts/gguf-to-safetensors.py FILE.gguf DIR    # prints DIR
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

STAMP = "vramgate-source.json"


def stamp_of(gguf: Path) -> dict[str, object]:
    info = gguf.stat()
    return {"gguf": gguf.name, "size": info.st_size, "mtime_ns": info.st_mtime_ns, "dtype": "bf16"}


def convert(gguf: Path, out: Path) -> Path:
    stamp = out / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == stamp_of(gguf):
        return out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch  # here: an up-to-date folder needs neither torch nor transformers loaded
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf} to safetensors in {out} (once)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model = model.to(torch.bfloat16)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / STAMP).write_text(json.dumps(stamp_of(gguf)))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: gguf-to-safetensors.py FILE.gguf OUT_DIR")
    print(convert(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()))
