"""Pure pieces of an engine's own API through the gateway: which engine serves which route, the
CORS origin rule, the engine's key read, hidden and moved out of argv."""

from __future__ import annotations

import pytest

from vramgate import engine_keys
from vramgate.api import native, passthrough
from vramgate.auth import cross_site, origin_allowed
from vramgate.config import ModelConfig, Settings
from vramgate.engines.llamacpp import LlamaCppEngine
from vramgate.engines.vllm import VllmEngine
from vramgate.errors import ModelNotFound


@pytest.mark.parametrize(
    ("method", "path", "kinds"),
    [
        ("POST", "/completion", {"llamacpp"}),
        ("GET", "/props", {"llamacpp"}),
        ("POST", "/slots/3", {"llamacpp"}),
        ("POST", "/slots/3/x", None),
        ("GET", "/slots/3", None),
        ("POST", "/tokenize", {"llamacpp", "vllm", "sglang"}),
        ("POST", "/pooling", {"vllm"}),
        ("GET", "/metrics", None),  # the gateway's own
        ("GET", "/v1/models", None),
    ],
)
def test_engines_serving(method, path, kinds):
    """A route is the engine's where an adapter declares it, `{id}` matching one segment."""
    found = native.engines_serving(method, path)
    assert (set(found) if found is not None else None) == kinds


def test_unversioned_openai_routes_are_claimed():
    """`/chat/completions` (no engine but llama-server spells it so) is still relayed."""
    scope = {"method": "POST", "path": "/embeddings", "headers": []}
    assert native.claims(scope)
    assert not native.claims({**scope, "path": "/nothing"})


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        ("http://a.example", ["http://a.example"], True),
        ("http://a.example:81", ["http://a.example"], False),
        ("http://anything", ["*"], True),
        ("http://localhost:5173", ["localhost"], True),
        ("http://[::1]:3000", ["localhost"], True),
        ("http://localhost.evil.com", ["localhost"], False),
        ("http://a.example", [], False),
        # No origin of this machine (review finding 7: urlsplit().port raised, a 500 each).
        ("http://localhost:99999", ["localhost"], False),
        ("http://localhost:abc", ["localhost"], False),
        ("http://[::1", ["localhost"], False),
    ],
)
def test_origin_allowed(origin, allowed, ok):
    assert origin_allowed(origin, allowed) is ok


def test_cross_site_guard_lets_allowed_origins_through():
    headers = [(b"origin", b"http://app.example"), (b"host", b"127.0.0.1:8080")]
    assert cross_site(headers) is not None
    assert cross_site(headers, ["http://app.example"]) is None
    assert cross_site(headers, ["http://other.example"]) is not None


def test_an_origin_that_is_no_url_is_another_sites():
    """Review finding 7: `http://[::1` made urlsplit raise, a 500 on every POST route; an
    Origin no page of this site sends is refused, with cors_origins or without."""
    for origin in (b"http://[::1", b"http://127.0.0.1:99999", b"http://127.0.0.1:abc"):
        headers = [(b"origin", origin), (b"host", b"127.0.0.1:8080")]
        assert cross_site(headers) is not None
        assert cross_site(headers, ["localhost"]) is not None


def test_engine_key_from_args_and_hidden():
    """`--api-key a,b`: the first is sent; it leaves llama-server's argv for its environment,
    and a logged argv shows no key."""
    model = ModelConfig(engine="llamacpp", source="/m.gguf", args=["-c", "512", "--api-key", "a,b"])
    assert engine_keys.engine_key(model) == "a"
    spec = LlamaCppEngine(Settings()).launch("m", model, 9000)
    assert "a,b" not in spec.argv and spec.env["LLAMA_API_KEY"] == "a,b"
    assert engine_keys.redacted(["x", "--api-key", "s", "--api-key=t"]) == [
        "x", "--api-key", "***", "--api-key=***",
    ]  # fmt: skip
    vllm = ModelConfig(engine="vllm", source="org/m", args=["--api-key=k"])
    spec = VllmEngine(Settings()).launch("m", vllm, 9000)
    assert not any(a == "k" or a.endswith("=k") for a in spec.argv)
    assert spec.env["VLLM_API_KEY"] == "k"
    assert engine_keys.engine_key(ModelConfig(engine="command", cmd="x ${PORT}")) is None


def test_engine_key_from_a_key_file(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# comment\nfirst\nsecond\n")
    model = ModelConfig(engine="llamacpp", source="/m.gguf", args=["--api-key-file", str(keys)])
    assert engine_keys.engine_key(model) == "first"


def test_default_model():
    """A sole model is the default; with several, only `default_model` (a name or alias)."""
    one = Settings(models={"a": ModelConfig(engine="command", cmd="x ${PORT}")})
    assert one.default_name == "a"
    two = {
        "a": ModelConfig(engine="command", cmd="x ${PORT}"),
        "b": ModelConfig(engine="command", cmd="x ${PORT}", aliases=["bee"]),
    }
    assert Settings(models=two).default_name is None
    assert Settings(models=two, default_model="bee").default_name == "b"


def test_upstream_path_split():
    """The raw path (review finding 9: the server's `path` is decoded already, and a second
    unquote made `%2F` split the name and `%252F` reach it): the name decoded once, the
    engine's path as it came."""
    assert passthrough.split_upstream(b"/upstream/m/v1/models") == ("m", "/v1/models")
    assert passthrough.split_upstream(b"/upstream/org%2Fm") == ("org/m", "/")
    assert passthrough.split_upstream(b"/upstream/org%2Fm/props") == ("org/m", "/props")
    assert passthrough.split_upstream(b"/upstream/a%252Fb/x%2Fy%3F") == ("a%2Fb", "/x%2Fy%3F")
    for spelled in (b"/%75pstream/m/x", b"/upstream%2Fm/x"):  # decoded: /upstream/m/x
        with pytest.raises(ModelNotFound):
            passthrough.split_upstream(spelled)
    assert passthrough.query_model(b"a=1&model=org%2Fm") == "org/m"
