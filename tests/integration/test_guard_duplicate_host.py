"""Review of issue 23 (guards), the Host allow-list: a request with two Host headers.

guards.check_host (api/guards.py:80-89) looks at the FIRST Host header only and returns, while
auth.cross_site (auth.py:51-57) keeps the LAST one to compare with Origin. With
`Host: localhost:PORT`, then `Host: evil.example:PORT`, `Origin: http://evil.example:PORT`,
`Sec-Fetch-Site: same-origin`, each guard sees the header that suits it and both pass: the
request reaches the route (here the admin API, auth off). RFC 9112 section 3.2: a server MUST
answer 400 to a request with more than one Host; uvicorn's httptools parser does not (h11 would).
Low impact (a browser cannot send two Host headers), but the two guards disagree on which Host
is the request's.
"""

from __future__ import annotations

import socket

from tests.conftest import fake_cmd


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def test_two_host_headers_are_refused(gateway):
    gw = gateway({"models": {"m": {"engine": "command", "cmd": fake_cmd()}}})
    evil = f"evil.example:{gw.port}"
    request = (
        "POST /v1/models/unload-all HTTP/1.1\r\n"
        f"Host: localhost:{gw.port}\r\nHost: {evil}\r\n"
        f"Origin: http://{evil}\r\nSec-Fetch-Site: same-origin\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    ).encode()
    status_line = exchange(gw.port, request).split(b"\r\n", 1)[0]
    assert status_line.split()[1] in (b"400", b"403"), status_line
