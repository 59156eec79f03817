"""max_body_mb holds on every route of the app (docs/http-api.md: "body over max_body_mb 413
(every route, with Content-Length or chunked)"): the relayed routes, the gateway's own, the
pass-through routes (`/upstream/MODEL/PATH`) and engines' native routes (api/passthrough.py),
which stream a body on as it arrives. A Content-Length over the limit is a 413 before anything
starts; a chunked body that passes it mid-way ends the upstream request with a 413."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import fake_cmd, gateway  # noqa: F401  (the fixture)
from vramgate.api import native
from vramgate.app import RELAYS, create_app
from vramgate.config import Settings

LIMIT_MB = 0.01  # about 10 KiB: a body over it fits the socket buffers, so no upload is cut
BIG = b'{"model": "m", "pad": "' + b"x" * (64 << 10) + b'"}'
UPSTREAM = ["/upstream/m/v1/chat/completions", "/upstream/m/upload"]


def _routes(routes: list[Any]) -> Iterator[tuple[str, str]]:
    for route in routes:
        if hasattr(route, "original_router"):  # an included router
            yield from _routes(route.original_router.routes)
        elif methods := getattr(route, "methods", None):
            for method in methods - {"HEAD"}:
                yield method, route.path
        else:  # a mount (/static)
            yield "GET", route.path + "/x"


def every_route() -> list[tuple[str, str]]:
    """Each (method, path) the app serves, walked from the app itself: its FastAPI routes,
    the relays, the engines' native routes, the pass-through routes and an unknown path."""
    app = create_app(Settings.model_validate({"models": {}}))
    found = set(_routes(app.api.routes))
    found |= {("POST", path) for path in RELAYS}
    found |= set(native.ROUTES)
    found |= {(method, path) for path in UPSTREAM for method in ("POST", "PUT", "GET")}
    found.add(("POST", "/nowhere"))
    # Path parameters filled in: {label:path} and {id} take any segment.
    return sorted((method, re.sub(r"\{[^}]*\}", "m", path)) for method, path in found)


def test_the_walk_finds_every_kind_of_route():
    """The walk reaches the gateway's own routes, the relays, native and pass-through ones."""
    routes = every_route()
    for wanted in [("POST", "/admin/reload"), ("POST", "/v1/chat/completions"),
                   ("GET", "/props"), ("POST", "/slots/m"), ("POST", UPSTREAM[0]),
                   ("GET", "/static/x"), ("DELETE", "/api/delete")]:  # fmt: skip
        assert wanted in routes, wanted
    assert len(routes) > 80, len(routes)


def test_a_content_length_over_the_limit_is_a_413_on_every_route(gateway):  # noqa: F811
    """Every route answers 413 to a Content-Length over max_body_mb, and no engine starts."""
    gw = gateway({"max_body_mb": LIMIT_MB,
                  "models": {"m": {"engine": "command", "cmd": fake_cmd()}}})  # fmt: skip
    wrong = []
    for method, path in every_route():
        for kind in ("application/json", "application/octet-stream"):
            resp = gw.http.request(method, path, content=BIG, headers={"content-type": kind})
            if resp.status_code != 413 or "max_body_mb" not in resp.text:
                wrong.append(f"{method} {path} ({kind}): {resp.status_code} {resp.text[:100]}")
    assert not wrong, "\n".join(wrong)
    assert gw.model("m")["state"] == "stopped", "an engine was started for a refused body"


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize("path", UPSTREAM)
def test_a_chunked_body_over_the_limit_is_a_413_on_the_upstream_route(gateway, path, method):  # noqa: F811
    """A chunked body says nothing of its size: the engine starts, and the body passing the
    limit mid-way ends the upstream request and answers 413 (nothing was sent yet)."""
    gw = gateway({"max_body_mb": LIMIT_MB,
                  "models": {"m": {"engine": "command", "cmd": fake_cmd()}}})  # fmt: skip
    chunks = iter([BIG[i : i + 4096] for i in range(0, len(BIG), 4096)])
    resp = gw.http.request(method, path, content=chunks,  # type: ignore[arg-type]
                           headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert resp.status_code == 413, f"{resp.status_code} {resp.text[:200]}"
    assert "max_body_mb" in resp.text, resp.text
    small = gw.http.post("/upstream/m/v1/chat/completions",
                         json={"model": "m", "max_tokens": 1,
                               "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert small.status_code == 200, small.text  # a body within the limit still goes through
