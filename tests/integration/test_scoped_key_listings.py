"""Review of issue 23 (guards), item "a 404 listing only the key's models".

resolve_or_404 now lists only the models the key may use ("another key's models are not this
one's to learn of", api/common.py:23), and /v1/models, /api/tags, /api/ps filter the same way;
but /v1/models/loaded and /v1/models/stats (README: "key" routes) still list every model, with
its pid, port and engine URL, to a key scoped to one other model (api/manage.py).
"""

from __future__ import annotations

from tests.conftest import fake_cmd

ONE, ADMIN = "k-one-23g", "k-admin-23g"


def test_a_key_scoped_to_one_model_learns_of_no_other(gateway):
    cfg = {
        "auth": {"admin_keys": [ADMIN]},
        "models": {
            "secret": {"engine": "command", "cmd": fake_cmd(), "api_keys": ["k-secret-23g"]},
            "one": {"engine": "command", "cmd": fake_cmd(), "api_keys": [ONE]},
        },
    }
    gw = gateway(cfg, key=ADMIN)
    assert gw.http.post("/admin/models/secret/load").status_code == 200
    mine = {"Authorization": f"Bearer {ONE}"}
    missing = gw.http.post("/v1/chat/completions", json={"model": "nope", "messages": []},
                           headers=mine)  # fmt: skip
    assert missing.status_code == 404 and "secret" not in missing.text  # the fix holds here
    for path in ("/v1/models", "/api/tags", "/api/ps", "/v1/models/loaded", "/v1/models/stats"):
        resp = gw.http.get(path, headers=mine)
        assert resp.status_code == 200, (path, resp.text)
        assert "secret" not in resp.text, (path, resp.text[:300])
