"""A raw engine for translation tests: GET answers 200 (health, models); every streamed POST
gets the exact bytes of the file named by --script (an SSE body) in --piece-byte pieces after a
200 head, then a close; a non-streamed POST gets the file named by --json. Binds 127.0.0.1."""

from __future__ import annotations

import argparse
import socket
import threading
from pathlib import Path

from raw_http import RequestReader  # beside this file, run as a file


def serve(conn: socket.socket, script: bytes, answer: bytes, piece: int) -> None:
    try:
        if (request := RequestReader(conn).next()) is None:
            return
        head, rest = request
        if head.startswith(b"GET"):
            body, kind = b'{"status":"ok","data":[{"id":"m"}]}', b"application/json"
        elif b'"stream":true' not in rest.replace(b" ", b""):
            body, kind = answer, b"application/json"
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Connection: close\r\n\r\n")  # fmt: skip
            for i in range(0, len(script), piece):
                conn.sendall(script[i : i + piece])
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (kind, len(body), body))  # fmt: skip
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--script", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--piece", type=int, default=7)  # 7: cuts UTF-8 and field names
    args = parser.parse_args()
    script = args.script.read_bytes()
    answer = args.json.read_bytes() if args.json else b"{}"
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(64)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, script, answer, args.piece), daemon=True).start()


if __name__ == "__main__":
    main()
