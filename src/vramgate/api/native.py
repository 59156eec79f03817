"""Each engine's own routes (llama-server's /completion, /tokenize, /props, /slots/N...; vLLM's
/tokenize, /pooling...; engines/*.py declare them) and the /v1-less spellings of the OpenAI
routes, relayed to the model a request names: its body's `model`, a `model` query parameter, or
the default model. JSON POSTs take the relay's path (api/relaying.py); the rest pass through
(api/passthrough.py).
"""

from __future__ import annotations

from typing import Any

from starlette.types import Receive, Scope, Send

from vramgate.api import openai
from vramgate.api.passthrough import (
    HOP_HEADERS,
    query_model,
    require_route_access,
    serve_native,
)
from vramgate.api.relaying import Endpoint, Routed, parse_request
from vramgate.auth import Access
from vramgate.config import Settings
from vramgate.engines import REGISTRY
from vramgate.engines.base import UNVERSIONED
from vramgate.errors import ModelNotFound
from vramgate.scheduling.driver import Scheduler


def _table() -> dict[tuple[str, str], frozenset[str]]:
    """(method, path pattern) -> the engine kinds that serve it."""
    table: dict[tuple[str, str], set[str]] = {}
    for kind, adapter in REGISTRY.items():
        for path, methods in adapter.native_routes.items():
            for method in methods:
                table.setdefault((method, path), set()).add(kind)
    return {key: frozenset(kinds) for key, kinds in table.items()}


ROUTES = _table()
# Patterns with a `{id}` segment, by their segment count, for the paths no exact entry matches.
_PATTERNS = [(method, path.split("/")) for method, path in ROUTES if "{" in path]


def route_of(method: str, path: str) -> tuple[str, frozenset[str]] | None:
    """The engine route `method` `path` is (its pattern: `/slots/{id}` for /slots/0) and the
    engine kinds that serve it natively, or None: no engine does."""
    kinds = ROUTES.get((method, path))
    if kinds is not None:
        return path, kinds
    parts = path.split("/")
    for wanted, pattern in _PATTERNS:
        if (
            wanted == method
            and len(pattern) == len(parts)
            and all(p == q or p.startswith("{") for p, q in zip(pattern, parts, strict=True))
        ):
            joined = "/".join(pattern)
            return joined, ROUTES[(method, joined)]
    return None


def engines_serving(method: str, path: str) -> frozenset[str] | None:
    """The engine kinds that serve `method` `path` natively, or None: no engine does."""
    found = route_of(method, path)
    return None if found is None else found[1]


def claims(scope: Scope) -> bool:
    """Whether this request goes to an engine route (else the gateway's own routes see it)."""
    method, path = scope["method"], scope["path"]
    if method == "POST" and path in UNVERSIONED:
        return True
    return engines_serving(method, path) is not None


async def serve(scope: Scope, receive: Receive, send: Send) -> None:
    method, path = scope["method"], scope["path"]
    # The pattern, not the path, labels the metrics: /slots/{id} is one series, whatever id a
    # client sends (any text there once grew /metrics by a series a request, unauthenticated).
    pattern, kinds = route_of(method, path) or (path, frozenset())
    if method == "POST" and _is_json(scope):
        query = scope.get("query_string", b"")
        endpoint = NativeEndpoint(path, query, kinds, pattern, scope["headers"])
        await endpoint(scope, receive, send)
    else:
        await serve_native(scope, receive, send, kinds, pattern)


# What the relay writes itself, or the engine must not see: the client's key for the gateway;
# an encoding the relay would have to undo, or one the body no longer has (the relay may write
# it anew); an expectation uvicorn met already; the gateway's own cookies.
_NOT_RELAYED = HOP_HEADERS | {
    b"content-type", b"content-length", b"content-encoding", b"accept-encoding", b"expect",
    b"cookie",
}  # fmt: skip


def client_head(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's own header lines, for the engine's native routes: llama-server reads some
    (its tools' x-tool-cwd and x-tool-runtime, a conversation's x-conversation-id)."""
    return b"".join(k + b": " + v + b"\r\n" for k, v in headers if k not in _NOT_RELAYED)


def _is_json(scope: Scope) -> bool:
    """A body that is JSON or says nothing of its type (curl -d sends a form type: JSON too,
    as llama-server reads it)."""
    for key, value in scope["headers"]:
        if key == b"content-type":
            kind = value.split(b";")[0].strip().lower()
            return kind in (b"application/json", b"application/x-www-form-urlencoded", b"")
    return True


class NativeEndpoint(Endpoint):
    """A JSON POST on an engine route, one per request: relayed to the same path of the named
    model's engine where its engine serves it, else (a /v1-less OpenAI spelling) as the OpenAI
    route."""

    def __init__(
        self,
        path: str,
        query: bytes,
        kinds: frozenset[str],
        pattern: str,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        super().__init__(path)
        self.query = query
        self.kinds = kinds
        self.route_label = pattern  # the route as the engines declare it
        self.headers = headers  # the client's
        self.access: Access | None = None  # the request's key, read by parse()

    def parse(self, body: bytes, settings: Settings, access: Access) -> dict[str, Any]:
        self.access = access
        if not body.strip():  # llama-server takes an empty body as {} (POST /slots/0?action=..)
            body = b"{}"
        return parse_request(body, settings, access, query_model(self.query))

    async def label(self, scheduler: Scheduler, payload: dict[str, Any]) -> str:
        return payload["model"]

    async def route(
        self, scheduler: Scheduler, name: str, label: str, payload: dict[str, Any], body: bytes
    ) -> Routed:
        model = scheduler.settings.models[name]
        if model.engine in self.kinds:
            assert self.access is not None  # parse() came first
            require_route_access(self.access, model.engine, "POST", self.route_label)
            target = self.path + ("?" + self.query.decode("latin-1") if self.query else "")
            head = client_head(self.headers)
            return Routed(name, target, body, payload.get("stream") is True, head=head)
        versioned = UNVERSIONED.get(self.path)
        if versioned is not None:
            return await openai.RELAYS[versioned].route(scheduler, name, label, payload, body)
        raise ModelNotFound(f"model '{name}' ({model.engine}) does not serve POST {self.path}")
