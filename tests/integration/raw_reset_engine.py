"""A raw engine that lives on and resets what it is asked: GET answers 200 (health, models); a
POST is read whole, its request line appended to the file named by --count, and the connection
closed abortively (SO_LINGER 0: a reset, no FIN, no answer). Binds 127.0.0.1."""

from __future__ import annotations

import argparse
import socket
import struct
import threading
from pathlib import Path


def serve(conn: socket.socket, count: Path) -> None:
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                if not (data := conn.recv(65536)):
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(buf) < length and (data := conn.recv(65536)):
                buf += data
            buf = buf[length:]
            if not head.startswith(b"POST"):
                body = b'{"status":"ok","data":[{"id":"r"}]}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
                continue
            with count.open("ab") as f:
                f.write(head.split(b"\r\n")[0] + b"\n")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=Path, required=True)
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", args.port))
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, args.count), daemon=True).start()


if __name__ == "__main__":
    main()
