"""What every route shares before and around its handler, whichever client API it belongs to:
the Host allow-list, the body read within max_body_mb, JSON bodies parsed within a nesting
depth, strict `stream`, durations a client sends held to one bound, and unexpected errors
answered without their text (which goes to the log under a request id)."""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import secrets
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from vramgate.config import MAX_DURATION_S, Settings
from vramgate.errors import BadRequest, Forbidden, GatewayError, PayloadTooLarge

log = logging.getLogger("vramgate.api")

# Deeper bodies are refused at parse: orjson parses 1024 levels but writes only 255, and no
# client API's request nests past a few dozen (tool schemas included).
MAX_DEPTH = 128
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # a `host` that names no one name clients use
_CONTAINERS = (dict, list)
_UNPARSED: Any = object()
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})  # most requests: no address parsed


# -- the Host allow-list --------------------------------------------------------------------


def host_name(host: str) -> str:
    """A Host header's name, lowercased, without its port, brackets or trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8080
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.removesuffix(".")


def host_allowed(host: str, settings: Settings, machine: Iterable[str] = ()) -> bool:
    """Whether a request's Host names this gateway; else a page on another site may have
    rebound its own name to the gateway's address (DNS rebinding), where the cross-site rule
    cannot tell it apart: its Origin then matches its Host, and Sec-Fetch-Site says same-origin.

    Allowed: loopback names (localhost, *.localhost); any address literal (a rebinding needs a
    name: a page on an address talks to that address only, so one sent to the gateway's
    address is on the gateway's own page); the configured `host`; the machine's own names
    (`machine`); and `allowed_hosts` (`*.example.com` for its subdomains, `*` for any)."""
    name = host_name(host)
    if name in _LOOPBACK or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    configured = settings.host.lower().strip("[]")
    if name == configured and configured not in _WILDCARD_HOSTS:
        return True
    if name in machine:
        return True
    for entry in settings.allowed_hosts:
        if entry == "*" or entry == name:
            return True
        if entry.startswith("*.") and name.endswith(entry[1:]):
            return True
    return False


def request_host(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The request's one Host header (None if it sent none): the only place Host is read, so
    the allow-list and the cross-site rule judge the same name. Two are a 400 (RFC 9112 3.2),
    which uvicorn's httptools parser lets through: the first and the last could each pass
    the guard that read it."""
    host = None
    for key, value in headers:
        if key == b"host":
            if host is not None:
                raise BadRequest("a request with more than one Host header")
            host = value.decode("latin-1")
    return host


def check_host(headers: Iterable[tuple[bytes, bytes]], settings: Settings,
               machine: Iterable[str] = ()) -> None:  # fmt: skip
    """403 for a Host this gateway does not answer to (none sent: a program, never a browser)."""
    host = request_host(headers)
    if host is not None and not host_allowed(host, settings, machine):
        raise Forbidden(
            f"Host '{host_name(host)}' is not this gateway's name (a DNS rebinding?); "
            "add it to allowed_hosts in the configuration if it is"
        )


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_path(path: str) -> None:
    """400 for a path with a control character (a decoded %0D%0A): relayed to an engine, it
    would end the request line there and start headers of the client's choosing."""
    if _CONTROL.search(path):
        raise BadRequest(f"path {path[:200]!r}: control characters are not allowed")


# -- the body, within its size and depth ----------------------------------------------------


def check_length(headers: list[tuple[bytes, bytes]], max_bytes: int) -> None:
    """413 for a Content-Length over `max_bytes`, before anything is read or started."""
    for key, value in headers:
        if key == b"content-length" and value.isdigit() and int(value) > max_bytes:
            raise too_large(int(value), max_bytes)


async def read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `max_bytes`."""
    check_length(scope["headers"], max_bytes)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise too_large(size, max_bytes)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def max_body_bytes(settings: Settings) -> int:
    return int(settings.max_body_mb * (1 << 20))


def too_large(size: int, max_bytes: int) -> PayloadTooLarge:
    limit_mb = max_bytes / (1 << 20)
    return PayloadTooLarge(
        f"request body of {size} bytes is over the limit of {limit_mb:g} MiB (max_body_mb)"
    )


def replayed(body: bytes, receive: Receive) -> Receive:
    """`receive` for an app that reads a body already read: it first, then the client's own
    messages (a disconnect, which streaming routes listen for)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def again() -> Any:
        return pending.pop() if pending else await receive()

    return again


def parse_json(body: bytes) -> Any:
    """A JSON body, refused (400) when it is not JSON or nests deeper than MAX_DEPTH."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise BadRequest(_too_deep()) from None
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    check_depth(body, payload)
    return payload


def check_depth(body: bytes, payload: Any = _UNPARSED) -> None:
    """400 when `body` (parsed: `payload`, parsed here if not given) nests deeper than
    MAX_DEPTH; a body that is not JSON is its route's to refuse. Counting brackets first spares
    nearly every request the parse and the walk, which visits containers only, a level at a
    time."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return
    if payload is _UNPARSED:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if "depth limit" in str(exc):
                raise BadRequest(_too_deep()) from None
            return
    level = [payload] if isinstance(payload, _CONTAINERS) else []
    for _ in range(MAX_DEPTH):
        if not level:
            return
        below = []
        for value in level:
            items = value.values() if type(value) is dict else value
            below += [item for item in items if isinstance(item, _CONTAINERS)]
        level = below
    if level:
        raise BadRequest(_too_deep())


def _too_deep() -> str:
    return f"request body is nested deeper than {MAX_DEPTH} levels"


# -- fields every API types alike ----------------------------------------------------------


def check_stream(payload: dict[str, Any]) -> None:
    """`stream` is true, false, or null (the API's default, as absent); anything else is a
    400, as OpenAI's, Anthropic's and Ollama's own servers answer "yes", "false" or 1."""
    value = payload.get("stream")
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"stream: must be true or false, got {orjson.dumps(value).decode()[:40]}")


def bounded_s(seconds: float, field: str) -> float:
    """A duration a client sent, in seconds: negative or past MAX_DURATION_S (a century, 1e308,
    400 digits) means forever, returned as -1; NaN is a 400. Never an infinite float stored."""
    if math.isnan(seconds):
        raise BadRequest(f"{field}: not a number of seconds")
    if seconds < 0 or seconds > MAX_DURATION_S:
        return -1.0
    return seconds


# -- unexpected errors ----------------------------------------------------------------------


def internal_error(where: str, exc: BaseException) -> GatewayError:
    """A 500 that says nothing of the code: `exc` and its traceback go to the log under the id
    the answer gives, for whoever runs the gateway to find."""
    request_id = secrets.token_hex(6)
    log.error("%s failed (request id %s)", where, request_id, exc_info=exc)
    return GatewayError(
        f"internal error (request id {request_id}); the gateway's log has the details"
    )
