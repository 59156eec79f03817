"""The guards every route shares (api/guards.py), case by case: Host names, nesting depth,
durations, strict `stream`, and a bug's 500 that shows nothing of the code."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from vramgate.api import guards
from vramgate.app import create_app
from vramgate.auth import cross_site
from vramgate.config import MAX_DURATION_S, Settings
from vramgate.errors import BadRequest, Forbidden
from vramgate.inventory import check_options


@pytest.mark.parametrize(("header", "name"), [
    ("localhost:8080", "localhost"), ("[::1]:11434", "::1"), ("::1", "::1"),
    ("Evil.Example.:80", "evil.example"), ("127.0.0.1", "127.0.0.1"),
])  # fmt: skip
def test_a_host_header_is_read_as_its_name(header, name):
    assert guards.host_name(header) == name


@pytest.mark.parametrize(("host", "allowed"), [
    ("localhost:1", True), ("a.b.localhost", True), ("127.9.9.9:1", True), ("[::1]:1", True),
    ("10.0.0.5:8080", True),  # an address literal: no rebinding goes through one
    ("evil.example:8080", False), ("localhost.evil.example", False), ("gw.lan", False),
    ("my-box", True), ("api.corp", True), ("corp", False), ("set.host.name", True),
])  # fmt: skip
def test_the_host_allow_list(host, allowed):
    settings = Settings(host="set.host.name", allowed_hosts=["*.corp"])
    assert guards.host_allowed(host, settings, {"my-box"}) is allowed


def test_a_wildcard_host_is_no_name_and_star_allows_any():
    assert not guards.host_allowed("0.0.0.0.evil", Settings(host="0.0.0.0"))
    assert guards.host_allowed("anything.example", Settings(allowed_hosts=["*"]))


def test_check_host_refuses_a_rebound_name_and_lets_a_missing_host_pass():
    with pytest.raises(Forbidden, match=r"evil\.example"):
        guards.check_host([(b"host", b"evil.example:8080")], Settings())
    guards.check_host([(b"user-agent", b"curl")], Settings())


def test_two_host_headers_are_a_400_for_both_guards_that_read_host():
    """The allow-list and the cross-site rule read the one Host: two of them are refused,
    not judged first by one guard and last by the other (RFC 9112 3.2)."""
    two = [(b"host", b"localhost:8080"), (b"host", b"evil.example:8080"),
           (b"origin", b"http://evil.example:8080")]  # fmt: skip
    with pytest.raises(BadRequest, match="more than one Host"):
        guards.check_host(two, Settings())
    with pytest.raises(BadRequest, match="more than one Host"):
        cross_site(two)


@pytest.mark.parametrize("depth", [guards.MAX_DEPTH + 1, 300, 1024, 1025, 5000])
def test_a_body_nested_past_the_limit_is_a_400(depth):
    body = b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    with pytest.raises(BadRequest, match="nested deeper"):
        guards.parse_json(body)


def test_a_body_at_the_limit_parses_brackets_in_strings_included():
    depth = guards.MAX_DEPTH
    body = b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b', "s": "' + b"[" * 500 + b'"}'
    assert guards.parse_json(body)["s"] == "[" * 500


@pytest.mark.parametrize(("seconds", "bounded"), [
    (0.0, 0.0), (300.0, 300.0), (MAX_DURATION_S, MAX_DURATION_S), (MAX_DURATION_S + 1, -1.0),
    (1e308, -1.0), (float("inf"), -1.0), (-5.0, -1.0), (float("-inf"), -1.0),
])  # fmt: skip
def test_a_duration_is_bounded_and_never_infinite(seconds, bounded):
    assert guards.bounded_s(seconds, "keep_alive") == bounded


def test_a_duration_that_is_no_number_is_a_400():
    with pytest.raises(BadRequest, match="keep_alive"):
        guards.bounded_s(float("nan"), "keep_alive")


@pytest.mark.parametrize("value", ["yes", "false", 1, 0, [], {}, "true"])
def test_stream_must_be_a_boolean(value):
    with pytest.raises(BadRequest, match="stream: must be true or false"):
        guards.check_stream({"stream": value})


@pytest.mark.parametrize("value", [True, False, None])
def test_stream_true_false_or_null_pass(value):
    guards.check_stream({"stream": value})
    guards.check_stream({})


def test_an_internal_error_shows_no_exception_and_logs_it_under_its_id(caplog):
    """Reproduced: a bug answered `internal error: TypeError(...)` to any client."""
    exc = KeyError("secret-internal-key")
    try:
        raise exc
    except KeyError:  # raised, so that it has a traceback to log
        pass
    with caplog.at_level(logging.ERROR, logger="vramgate.api"):
        error = guards.internal_error("relaying /v1/x", exc)
    assert "secret-internal-key" not in error.message and "KeyError" not in error.message
    request_id = error.message.split("request id ")[1].split(")")[0]
    assert len(request_id) == 12
    [record] = caplog.records
    assert request_id in record.getMessage() and record.exc_info is not None
    assert "secret-internal-key" in caplog.text  # the traceback, for the operator


def test_a_bug_in_any_route_answers_a_request_id_in_the_routes_shape(tmp_path, caplog):
    """The FastAPI routes' 500s too: a route that raises answers no exception text, in the shape
    of its API, and the exception is logged under the answer's id."""
    app = create_app(Settings(state_dir=tmp_path))

    async def boom() -> None:
        raise TypeError("secret-internal-detail")

    app.api.add_api_route("/api/boom", boom)
    app.api.add_api_route("/v1/boom", boom)

    async def ask(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await c.get(path)

    with caplog.at_level(logging.ERROR, logger="vramgate.api"):
        ollama, openai = asyncio.run(ask("/api/boom")), asyncio.run(ask("/v1/boom"))
    assert ollama.status_code == openai.status_code == 500
    assert "request id" in ollama.json()["error"]
    assert "request id" in openai.json()["error"]["message"]
    assert "secret-internal-detail" not in ollama.text + openai.text
    assert "secret-internal-detail" in caplog.text


@pytest.mark.parametrize("ttl", [1e308, 4e9])
def test_an_adhoc_ttl_past_the_bound_is_a_400(ttl):
    """A request's ad-hoc `ttl` is a client's duration too: past the bound, refused."""
    with pytest.raises(BadRequest, match="ttl"):
        check_options({"ttl": ttl})
    assert check_options({"ttl": 600})["ttl"] == 600


def test_the_depth_check_of_an_unparsed_body_leaves_what_is_not_json_to_its_route():
    guards.check_depth(b"[" * 500)  # not JSON: no verdict here
    guards.check_depth(b"text/plain with {[ brackets ]}")
    with pytest.raises(BadRequest, match="nested deeper"):
        guards.check_depth(b"[" * 300 + b"]" * 300)
    with pytest.raises(BadRequest, match="nested deeper"):
        guards.check_depth(b"[" * 2000 + b"]" * 2000)  # past what orjson parses at all
