"""A gateway process for a benchmark: `vramgate serve` on a free port with a config written to a
temporary state_dir, and an HTTP client to it; stopped at the end."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from vramgate.runtimes.local import free_port


@contextlib.contextmanager
def running_gateway(models: dict[str, Any], **settings: Any) -> Iterator[httpx.Client]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="vramgate-bench-") as tmp:
        config = {"port": port, "state_dir": tmp, **settings, "models": models}
        (Path(tmp) / "vramgate.yaml").write_text(yaml.safe_dump(config))
        gateway = subprocess.Popen(
            [sys.executable, "-m", "vramgate", "serve", "-c", str(Path(tmp) / "vramgate.yaml")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as http:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        if http.get("/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        time.sleep(0.1)
                yield http
        finally:
            gateway.terminate()
            gateway.wait(30)
