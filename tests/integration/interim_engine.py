"""A raw engine that answers every POST with an interim `100 Continue` (or --interim), then a
whole chat completion; GET (health, models) gets 200. Binds 127.0.0.1."""

from __future__ import annotations

import argparse
import socket
import threading

import orjson
from raw_http import RequestReader  # beside this file, run as a file

ANSWER = orjson.dumps(
    {
        "id": "x", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "hello"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
)  # fmt: skip


def serve(conn: socket.socket, interim: bytes) -> None:
    requests = RequestReader(conn)
    with conn:
        while (request := requests.next()) is not None:
            head, _ = request
            if head.startswith(b"GET"):
                body, pre = b'{"status":"ok","data":[{"id":"m"}]}', b""
            else:
                body, pre = ANSWER, interim
            conn.sendall(pre + b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interim", default="HTTP/1.1 100 Continue\r\n\r\n")
    args = parser.parse_args()
    interim = args.interim.encode().decode("unicode_escape").encode("latin-1")
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(64)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, interim), daemon=True).start()


if __name__ == "__main__":
    main()
