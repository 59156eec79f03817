"""Review 23: Ollama's /api/embed reads the engine's answer without the type checks every other
translated answer has (checks.py: "an engine's [JSON], where a field of the wrong type reads as
absent"): ollama_convert.embed_response calls .get on whatever `data` holds and on `usage`, so
an answer of the wrong shape is a 500 "internal error" instead of an answer or a 502."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import free_port, gateway  # noqa: F401  (the fixture)

RAW = Path(__file__).parent.parent / "integration" / "raw_sse_engine.py"
VECTOR = {"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}

ANSWERS = {
    "usage is a string": {"data": [VECTOR], "usage": "n/a"},
    "data is an object": {"data": VECTOR},
    "an item is not an object": {"data": [VECTOR, 7]},
    "an index is null": {"data": [VECTOR, {**VECTOR, "index": None}]},
}


@pytest.mark.parametrize("answer", ANSWERS.values(), ids=ANSWERS.keys())
def test_a_mistyped_embeddings_answer_is_not_a_500(gateway, tmp_path, answer: dict[str, Any]):  # noqa: F811
    (tmp_path / "s.sse").write_bytes(b"")
    (tmp_path / "a.json").write_bytes(orjson.dumps(answer))
    port = free_port()
    cmd = (f"{sys.executable} {RAW} --port ${{PORT}} --script {tmp_path / 's.sse'}"
           f" --json {tmp_path / 'a.json'}")  # fmt: skip
    gateway({"ollama_port": port,
             "models": {"raw": {"engine": "command", "cmd": cmd, "task": "embed"}}})  # fmt: skip
    r = httpx.post(f"http://127.0.0.1:{port}/api/embed", timeout=60,
                   json={"model": "raw", "input": ["a", "b"]})  # fmt: skip
    assert r.status_code != 500, r.text
