"""A client that stops reading its answer (a stopped process, a full window: the TCP connection
stays up) is cut off after client_write_timeout (httpserver.py): its request is cancelled as a
hang-up is, its engine slot freed, and the log says why. Before, the relay waited in uvicorn's
drain with no bound: in_flight stayed 1 for ever, and with max_concurrency 1 everyone waited."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import fake_cmd, gateway, wait_until  # noqa: F401  (the fixture)

RAW = Path(__file__).with_name("raw_sse_engine.py")
WRITE_TIMEOUT_S = 2.0
BIG = "x" * (32 << 20)  # an answer over the kernel's socket buffers: the writes pause
HOLD_S = 20.0  # the bound many times over


def stalled_client(port: int, body: bytes) -> socket.socket:
    """A client that sends its request, sees its answer begin, then reads nothing more."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))  # fmt: skip
    assert b"200 OK" in sock.recv(200)  # the answer began; from now on nothing is read
    return sock


def config(**model: Any) -> dict[str, Any]:
    return {"client_write_timeout": WRITE_TIMEOUT_S,
            "models": {"m": {"engine": "command", "ttl": 60, "max_concurrency": 1, **model,
                             "cmd": fake_cmd("--tokens-per-s", "0",
                                             "--max-tokens", "2000000")}}}  # fmt: skip


def answer_of(stream: bool) -> bytes:
    return orjson.dumps({"model": "m", "stream": stream, "max_tokens": 2000000,
                         "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip


def ends(sock: socket.socket) -> bool:
    """Whether the gateway ends the connection (EOF, or a reset) while the client reads what
    is left of its answer."""
    sock.settimeout(10)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def test_a_client_that_stops_reading_a_stream_is_cut_off_and_frees_its_slot(gateway):  # noqa: F811
    """A stream left unread: after client_write_timeout the connection is closed, the request
    cancelled (in_flight 0), the log says why, and the next request gets the one slot."""
    gw = gateway(config())
    sock = stalled_client(gw.port, answer_of(stream=True))
    try:
        began = time.monotonic()
        assert wait_until(lambda: gw.model("m")["in_flight"] == 0, timeout_s=HOLD_S), (
            f"after {HOLD_S:.0f} s the stalled client still holds its slot: {gw.model('m')}"
        )
        assert time.monotonic() - began >= WRITE_TIMEOUT_S / 2, "cut off before its bound"
        assert "client_write_timeout" in gw.log(), gw.log()[-2000:]
        answer = gw.http.post("/v1/chat/completions", json={"model": "m", "max_tokens": 3,
                              "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert ends(sock), "the stalled client's connection was kept open"
    finally:
        sock.close()


def test_a_client_that_stops_reading_a_whole_answer_is_cut_off(gateway, tmp_path):  # noqa: F811
    """A whole answer of 32 MiB left unread: its slot is free once the engine answered, and
    after client_write_timeout the connection (and the answer buffered for it) goes too."""
    answer = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": BIG}}]}  # fmt: skip
    (tmp_path / "s.sse").write_bytes(b"")
    (tmp_path / "a.json").write_bytes(orjson.dumps(answer))
    cmd = (f"{sys.executable} {RAW} --port ${{PORT}} --script {tmp_path / 's.sse'}"
           f" --json {tmp_path / 'a.json'}")  # fmt: skip
    gw = gateway({"client_write_timeout": WRITE_TIMEOUT_S,
                  "models": {"m": {"engine": "command", "cmd": cmd}}})  # fmt: skip
    sock = stalled_client(gw.port, answer_of(stream=False))
    try:
        assert wait_until(lambda: "client_write_timeout" in gw.log(), timeout_s=HOLD_S), (
            f"after {HOLD_S:.0f} s the stalled client's connection is still open"
        )
        assert gw.model("m")["in_flight"] == 0
        assert ends(sock), "the stalled client's connection was kept open"
    finally:
        sock.close()


def test_a_slow_reader_within_the_bound_gets_its_whole_answer(gateway):  # noqa: F811
    """A client that reads, however slowly, within client_write_timeout keeps its stream."""
    gw = gateway({"client_write_timeout": WRITE_TIMEOUT_S,
                  "models": {"m": {"engine": "command",
                                   "cmd": fake_cmd("--tokens-per-s", "0")}}})  # fmt: skip
    body = orjson.dumps({"model": "m", "stream": True, "max_tokens": 8000,
                         "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    sock = stalled_client(gw.port, body)
    received = b""
    try:
        sock.settimeout(10)
        while not received.endswith(b"0\r\n\r\n"):
            time.sleep(0.005)  # under 800 KiB/s: slow, never stalled for the bound
            data = sock.recv(4096)
            assert data, "the stream was cut"
            received += data
    finally:
        sock.close()
    assert b"data: [DONE]" in received
    assert "client_write_timeout" not in gw.log()
