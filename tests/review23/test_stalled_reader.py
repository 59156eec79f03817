"""Review 23: a client that stops reading a stream (a stopped process, a full window: the TCP
connection stays up) holds its engine slot for ever. The relay waits in `send` (uvicorn's
drain) with no bound, so the request never ends: in_flight stays 1, the TTL never starts,
and the engine is never stopped, though docs/scheduling.md says every wait is bounded and the
engine here sends its answer as fast as it can be taken."""

from __future__ import annotations

import socket
import time

import orjson

from tests.conftest import fake_cmd, gateway  # noqa: F401  (the fixture)

HOLD_S = 20.0  # past read_timeout (3 s) several times over


def test_a_client_that_stops_reading_does_not_hold_its_slot_for_ever(gateway):  # noqa: F811
    gw = gateway({"defaults": {"read_timeout": 3},
                  "models": {"m": {"engine": "command", "ttl": 2,
                                   "cmd": fake_cmd("--tokens-per-s", "0",
                                                   "--max-tokens", "2000000")}}})  # fmt: skip
    body = orjson.dumps({"model": "m", "stream": True, "max_tokens": 2000000,
                         "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))  # fmt: skip
        assert b"200 OK" in sock.recv(200)  # the stream began; from now on nothing is read
        deadline = time.monotonic() + HOLD_S
        model = gw.model("m")
        while time.monotonic() < deadline:
            model = gw.model("m")
            if model["in_flight"] == 0:
                return
            time.sleep(1)
        raise AssertionError(f"after {HOLD_S:.0f} s the stalled stream still holds: {model}")
    finally:
        sock.close()
