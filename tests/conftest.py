"""Fixtures that run a real gateway process on loopback, configured per test."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from vramgate.filenames import file_stem
from vramgate.runtimes.local import free_port

FAKE = f"{sys.executable} -m vramgate.testing.fake_engine --port ${{PORT}}"


# What a fake engine holds, told to the gateway: on a machine without a GPU it runs on the CPU
# (device: auto), and a `command` engine nothing sizes is a discovery run, alone in host RAM,
# until measured; a test about something else that runs several at once says their size.
FAKE_RAM = {"ram_mib": 120}


def fake_cmd(*knobs: str) -> str:
    """The command line of a fake engine with the given knobs, for a `command` model."""
    return " ".join([FAKE, *map(shlex.quote, knobs)])


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_until(predicate, timeout_s: float = 10.0, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def stream_beside(
    gw: Gateway, streamed: str, other: str
) -> tuple[str, float, str, float, set[str]]:
    """Streams 8 tokens from `streamed` while a request to `other` is sent once it has begun.

    Returns the streamed text, when the stream ended, the other's text, when it came back, and
    the states `streamed` was seen in while its stream ran (a stop would abort it).
    """
    stream = gw.client.completions.create(model=streamed, prompt="x", max_tokens=8, stream=True)
    first = next(iter(stream))
    result: dict[str, Any] = {}

    def send_other() -> None:
        reply = gw.client.completions.create(model=other, prompt="x", max_tokens=1)
        result["text"] = reply.choices[0].text
        result["at"] = time.monotonic()

    thread = threading.Thread(target=send_other)
    thread.start()
    text, seen = first.choices[0].text, set()
    for i, chunk in enumerate(stream):
        text += chunk.choices[0].text
        if i < 4:  # well before the end: the client may lag behind a stream the gateway ended
            seen.add(gw.model(streamed)["state"])
    stream_end = time.monotonic()
    thread.join(20)
    return text, stream_end, result["text"], result["at"], seen


class Gateway:
    """A `vramgate serve` process and clients pointed at it."""

    def __init__(
        self, tmp: Path, config: dict[str, Any], extra_args: list[str], key: str | None = None
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.state_dir = tmp / "state"
        self.config_path = tmp / "vramgate.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "gateway.log"
        self._log = self.log_path.open("wb")
        argv = [sys.executable, "-m", "vramgate", "serve", "--port", str(self.port)]
        if config or "--model" not in extra_args:  # `serve --model` alone needs no file
            argv += ["--config", str(self.config_path)]
        env = dict(os.environ)
        if "state_dir" in config:
            self.state_dir = Path(config["state_dir"])
        else:  # through the environment, so that `serve --model` alone needs no file
            env["VRAMGATE_STATE_DIR"] = str(self.state_dir)
        self.proc = subprocess.Popen(
            argv + extra_args, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        # `key`: what the test's own status and admin calls present (an admin key, with auth on).
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, timeout=60, headers=headers)
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)
        self.aclient = openai.AsyncOpenAI(
            base_url=self.url + "/v1", api_key="unused", max_retries=0
        )
        if not wait_until(self._is_up, timeout_s=30):
            raise RuntimeError(f"gateway did not start:\n{self.log()}")

    def _is_up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return self.http.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        return self.http.get("/gateway/status").json()

    def model(self, name: str) -> dict[str, Any]:
        return next(m for m in self.status()["models"] if m["name"] == name)

    def engine_log(self, name: str) -> str:
        return (self.state_dir / "logs" / f"{file_stem(name)}.log").read_text(errors="replace")

    def engine_pids(self) -> list[int]:
        return [m["pid"] for m in self.status()["models"] if m["pid"]]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()
        self._log.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator:
    """Starts gateways with a config dict; each is stopped (and checked for orphans) at the end."""
    started: list[Gateway] = []

    def start(config: dict[str, Any], *extra_args: str, key: str | None = None) -> Gateway:
        gw = Gateway(tmp_path / f"gw{len(started)}", config, list(extra_args), key)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        pids = []
        if gw.proc.poll() is None:
            try:
                pids = gw.engine_pids()
            except httpx.HTTPError:
                pids = []
        gw.stop()
        leftover = [p for p in pids if not wait_until(lambda p=p: not pid_alive(p), 15)]
        for p in leftover:
            os.kill(p, signal.SIGKILL)
        assert not leftover, f"engines outlived the gateway: {leftover}"


class Hub:
    """A local Hugging Face Hub (vramgate.testing.fake_hub) serving repos from `root`."""

    def __init__(self, root: Path, *knobs: str, token: str = "hub-token") -> None:
        self.root = root
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "vramgate.testing.fake_hub", "--root", str(root)]
        argv += ["--port", str(self.port), "--token", token, *knobs]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if not wait_until(self._is_up, timeout_s=20):
            raise RuntimeError("the fake hub did not start")

    def _is_up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/_requests").status_code == 200
        except httpx.TransportError:
            return False

    def repo(self, repo_id: str, files: dict[str, bytes | str] | None = None) -> Path:
        folder = self.root / repo_id
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in (files or {}).items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                path.write_text(content)
            else:
                path.write_bytes(content)
        return folder

    def requests(self) -> list[list[Any]]:
        return httpx.get(f"{self.url}/_requests").json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def make_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Starts a local hub with knobs (--bytes-per-s, --fail-after-bytes); HF_ENDPOINT points at
    the last one started (for this process and the gateways started after it)."""
    started: list[Hub] = []
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)

    def start(*knobs: str) -> Hub:
        one = Hub(tmp_path / "hub", *knobs)
        monkeypatch.setenv("HF_ENDPOINT", one.url)
        started.append(one)
        return one

    yield start
    for one in started:
        one.stop()


@pytest.fixture
def hub(make_hub) -> Hub:
    """A local hub, with HF_ENDPOINT pointing at it (for this process and gateways started)."""
    return make_hub()


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    """A safetensors file (zeros) with these tensors: name -> (dtype, shape)."""
    sizes = {"F16": 2, "BF16": 2, "F32": 4}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype] * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset
