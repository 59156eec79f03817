"""A raw engine that resets what it read: GET answers 200 (health, models). A POST whose body
holds POISON is read whole, logged (`POISON <pid>` in the file named by --count) and closed
abortively (SO_LINGER 0: a reset, no FIN, no byte of an answer); the process then exits with
code 3 after --exit-after seconds (a crash after reading the request), or lives on where that
is negative. Any other POST gets a slow stream of --chunks completion chunks (one each 0.2 s),
logged `OK <pid>`. --start-delay: seconds before it listens. Binds 127.0.0.1."""

from __future__ import annotations

import argparse
import os
import socket
import struct
import threading
import time
from pathlib import Path

from raw_http import RequestReader  # beside this file, run as a file

CHUNK = (b'data: {"id":"c","object":"text_completion","model":"p","choices":[{"index":0,'
         b'"text":"t%d ","finish_reason":null}]}\n\n')  # fmt: skip


def log(args: argparse.Namespace, what: str) -> None:
    with args.count.open("a") as f:
        f.write(f"{what} {os.getpid()}\n")


def serve(conn: socket.socket, args: argparse.Namespace) -> None:
    requests = RequestReader(conn)
    with conn:
        while (request := requests.next()) is not None:
            head, body = request
            if not head.startswith(b"POST"):
                answer = b'{"status":"ok","data":[{"id":"p"}]}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))  # fmt: skip
                continue
            if b"POISON" in body:
                log(args, "POISON")
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                if args.exit_after >= 0:
                    time.sleep(args.exit_after)
                    os._exit(3)
                return
            log(args, "OK")
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
            for i in range(args.chunks):
                event = CHUNK % i
                conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
                time.sleep(0.2)
            event = b"data: [DONE]\n\n"
            conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=Path, required=True)
    parser.add_argument("--exit-after", type=float, default=-1.0)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--start-delay", type=float, default=0.0)
    args = parser.parse_args()
    time.sleep(args.start_delay)
    listener = socket.create_server(("127.0.0.1", args.port))
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, args), daemon=True).start()


if __name__ == "__main__":
    main()
