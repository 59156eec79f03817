"""Review 23: max_body_mb is promised on every route (docs/http-api.md: "body over max_body_mb
413 (every route, with Content-Length or chunked)"), but the pass-through routes
(`/upstream/MODEL/PATH`, and an engine's own non-JSON routes: api/passthrough.py) stream any
body to the engine, and start it for that."""

from __future__ import annotations

import pytest

from tests.conftest import fake_cmd, gateway  # noqa: F401  (the fixture)


@pytest.mark.parametrize("chunked", [False, True])
def test_the_body_limit_holds_on_the_upstream_route(gateway, chunked):  # noqa: F811
    gw = gateway({"max_body_mb": 1, "models": {"m": {"engine": "command", "cmd": fake_cmd()}}})
    big = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * (2 << 20)
    big += b'"}]}'
    content = iter([big[i : i + 65536] for i in range(0, len(big), 65536)]) if chunked else big
    resp = gw.http.post(
        "/upstream/m/v1/chat/completions",
        content=content,  # type: ignore[arg-type]
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 413, f"{resp.status_code} {resp.text[:200]}"
    if not chunked:  # its Content-Length says it is too big before anything starts
        assert gw.model("m")["state"] == "stopped", "the engine was started for a refused body"
