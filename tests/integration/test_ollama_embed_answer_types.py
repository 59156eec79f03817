"""Ollama's /api/embed reads the engine's answer as every translated answer does (checks.py: a
field of the wrong type reads as absent): a mistyped `usage` or `index` still gives the vectors,
a `data` that is unusable is the engine's error in Ollama's shape (502), never a 500."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import free_port, gateway  # noqa: F401  (the fixture)

RAW = Path(__file__).with_name("raw_sse_engine.py")
VECTOR = {"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}

OTHER = {"object": "embedding", "index": 1, "embedding": [1.0, 2.0]}
# The engine's answer -> (status, the vectors Ollama's answer holds; None: an error line).
ANSWERS: dict[str, tuple[dict[str, Any], int, Any]] = {
    "usage is a string": ({"data": [VECTOR], "usage": "n/a"}, 200, [[0.5, 0.25]]),
    "an index is null": ({"data": [VECTOR, {**OTHER, "index": None}]}, 200,
                         [[0.5, 0.25], [1.0, 2.0]]),
    "indexes out of order": ({"data": [OTHER, VECTOR]}, 200, [[0.5, 0.25], [1.0, 2.0]]),
    "data is an object": ({"data": VECTOR}, 502, None),
    "an item is not an object": ({"data": [VECTOR, 7]}, 502, None),
    "an embedding is not a list": ({"data": [{**VECTOR, "embedding": "x"}]}, 502, None),
}  # fmt: skip


@pytest.mark.parametrize(("answer", "status", "vectors"), ANSWERS.values(), ids=ANSWERS.keys())
def test_a_mistyped_embeddings_answer_is_read_or_refused_not_a_500(
    gateway,  # noqa: F811
    tmp_path,
    answer: dict[str, Any],
    status: int,
    vectors: Any,
):
    """Wrong-typed fields read as absent; an unusable `data` is a 502 in Ollama's shape."""
    (tmp_path / "s.sse").write_bytes(b"")
    (tmp_path / "a.json").write_bytes(orjson.dumps(answer))
    port = free_port()
    cmd = (f"{sys.executable} {RAW} --port ${{PORT}} --script {tmp_path / 's.sse'}"
           f" --json {tmp_path / 'a.json'}")  # fmt: skip
    gateway({"ollama_port": port,
             "models": {"raw": {"engine": "command", "cmd": cmd, "task": "embed"}}})  # fmt: skip
    r = httpx.post(f"http://127.0.0.1:{port}/api/embed", timeout=60,
                   json={"model": "raw", "input": ["a", "b"]})  # fmt: skip
    assert r.status_code == status, r.text
    if vectors is None:
        assert set(r.json()) == {"error"}, r.text
    else:
        assert r.json()["embeddings"] == vectors, r.text
