"""Cold start of gemma through llama-server as a local process and in a container, in one run.

    python -m bench.container_start [--repeats 3] [--out FILE.json]

Needs scripts/setup.sh's exports (llama-server, the gemma GGUF, VRAMGATE_TEST_IMAGE: the Debian
image scripts/docker-setup.sh builds) and a running dockerd. One gateway serves both models;
each round unloads both, then asks each for one token, local first, then the container. Reported:
spawn to ready (the gateway's "ready in") and request to answer, median and max of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from bench.gateway import running_gateway

ROOT = Path(__file__).resolve().parent.parent


def cold(http: httpx.Client, model: str) -> tuple[float, float]:
    http.post("/v1/models/unload", json={"model": model}).raise_for_status()
    began = time.perf_counter()
    body = {"model": model, "prompt": "Hello", "max_tokens": 1}
    http.post("/v1/completions", json=body).raise_for_status()
    answered = time.perf_counter() - began
    status = next(m for m in http.get("/gateway/status").json()["models"] if m["name"] == model)
    return status["ready_at"] - status["started_at"], answered


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "container_start.json"))
    args = parser.parse_args()
    gguf, binary = (
        os.environ["VRAMGATE_DEFAULT_GGUF"],
        os.environ["VRAMGATE_ENGINES__LLAMACPP__BINARY"],
    )
    image = os.environ["VRAMGATE_TEST_IMAGE"]
    mounts = [
        f"{Path(binary).parent}:{Path(binary).parent}:ro",
        f"{Path(gguf).parent}:{Path(gguf).parent}:ro",
    ]
    models = {
        "local": {"engine": "llamacpp", "source": gguf},
        "container": {"engine": "llamacpp", "source": gguf, "runtime": "docker",
                      "container": {"image": image, "volumes": mounts}},
    }  # fmt: skip
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    with running_gateway(models) as http:
        for _ in range(args.repeats):
            for name in models:
                rows[name].append(cold(http, name))
    result: dict[str, Any] = {"image": image, "repeats": args.repeats, "rows": {}}
    print(f"{'where':<11}{'ready s (median, max)':>24}{'answer s (median, max)':>25}")
    for name, runs in rows.items():
        ready, answer = [r for r, _ in runs], [a for _, a in runs]
        row = {"ready_s": [round(r, 3) for r in ready], "answer_s": [round(a, 3) for a in answer]}
        result["rows"][name] = row
        print(f"{name:<11}{statistics.median(ready):>14.3f}{max(ready):>10.3f}"
              f"{statistics.median(answer):>15.3f}{max(answer):>10.3f}")  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
