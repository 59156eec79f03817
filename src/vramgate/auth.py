"""API keys: who may reach the /v1 routes, a given model, and the admin routes.

A key comes as `Authorization: Bearer KEY` or `x-api-key: KEY` and is compared in constant time
with every configured key (no early exit, so timing tells nothing about which or how close).
Keys are never logged or echoed. With no key configured anywhere, everything is open.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from urllib.parse import SplitResult, urlsplit

from vramgate.api.guards import request_host
from vramgate.config import Settings
from vramgate.errors import Forbidden, Unauthorized

MISSING = "no API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`"
WRONG = "the API key is not valid"


# HTTP's own whitespace around a header value (RFC 9110 OWS), and nothing else: str.strip()
# would also remove a non-breaking space (0xA0 in latin-1) and match it to an empty key.
_OWS = " \t"


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key of an ASGI request's headers, if it has a non-empty one."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip(_OWS)
            if scheme.lower() == "bearer" and token:
                return token
        elif name == b"x-api-key":
            token = value.decode("latin-1").strip(_OWS)
            if token:
                return token
    return None


LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def _split_origin(origin: str) -> SplitResult | None:
    """`origin` split, or None where it is no URL (`http://[::1`) or its port is no number in
    0-65535 (`:99999`, `:abc`): no browser sends such an Origin, and a client's header is
    never a 500 (urlsplit and `.port` raise ValueError on them)."""
    try:
        parts = urlsplit(origin)
        _ = parts.port  # parsed only when read
    except ValueError:
        return None
    return parts


def origin_allowed(origin: str, allowed: Iterable[str]) -> bool:
    """Whether `cors_origins` (`allowed`) lets pages of `origin` call the gateway: '*' any
    origin, 'localhost' any origin on this machine (llama-server's value of the same name),
    else an origin exactly (scheme://host[:port])."""
    for entry in allowed:
        if entry == "*" or entry.rstrip("/") == origin:
            return True
        if entry == "localhost" and (parts := _split_origin(origin)) is not None:
            host = parts.netloc.rpartition(":")[0] if parts.port else parts.netloc
            if parts.scheme in ("http", "https") and host in LOCAL_HOSTS:
                return True
    return False


def cross_site(headers: Iterable[tuple[bytes, bytes]], allowed: Iterable[str] = ()) -> str | None:
    """Why a request comes from another site's page, or None; pages of the `allowed` origins
    (cors_origins) are not another site's.

    A page on any site can make a browser POST to this gateway (a form, or fetch with a
    text/plain body, needs no CORS preflight); with auth off nothing else would stop it from
    unloading models or starting engines. Browsers say where such a request comes from (Origin,
    Sec-Fetch-Site); programs (curl, SDKs) send neither and are not affected.
    """
    host = request_host(headers)
    origin = site = None
    for name, value in headers:
        if name == b"origin":
            origin = value.decode("latin-1")
        elif name == b"sec-fetch-site":
            site = value.decode("latin-1")
    if origin is not None and allowed and origin_allowed(origin, allowed):
        return None
    if site in ("cross-site", "same-site"):
        return f"a request from another site's page (Sec-Fetch-Site: {site})"
    if origin is not None and origin != "null":
        parts = _split_origin(origin)
        if parts is None or parts.netloc != host:
            return f"a request from another site's page (Origin {origin}, not {host})"
    if origin == "null":
        return "a request from an opaque origin (Origin: null)"
    return None


def _among(key: str, keys: Iterable[str]) -> bool:
    found = False
    for candidate in keys:  # every one compared: the time does not depend on which matches
        # An empty configured key never matches (the config refuses them; this is the backstop).
        found |= hmac.compare_digest(key.encode(), candidate.encode()) and bool(candidate)
    return found


class Access:
    """What one presented key opens under the current settings."""

    def __init__(self, settings: Settings, key: str | None) -> None:
        self.settings = settings
        self.open = not settings.auth_enabled
        self.key = key
        self.admin = self.api = False
        self.models: set[str] = set()
        if self.open or key is None:
            return
        auth = settings.auth
        self.admin = _among(key, auth.admin_keys)
        self.api = self.admin or _among(key, auth.api_keys)
        self.models = {name for name, m in settings.models.items() if _among(key, m.api_keys)}

    @property
    def is_admin(self) -> bool:
        """May use the admin routes (an admin key, or any request with auth off)."""
        return self.open or self.admin

    @property
    def known(self) -> bool:
        return self.open or self.api or bool(self.models)

    def require_known(self) -> None:
        """Any valid key (or none needed): else 401."""
        if not self.known:
            raise Unauthorized(MISSING if self.key is None else WRONG)

    def require_model(self, name: str) -> None:
        """May this key use `name`? A model with its own keys takes only those and admin keys."""
        self.require_known()
        if self.open or self.admin:
            return
        model = self.settings.models.get(name)  # an ad-hoc model is in no file: no keys of its own
        own = model.api_keys if model else []
        allowed = name in self.models if own else self.api
        if not allowed:
            raise Forbidden(f"this API key does not open model '{name}'")

    def require_adhoc(self) -> None:
        """Ad-hoc models have no keys of their own: a key that opens the /v1 routes (or an
        admin key), not one scoped to configured models. Checked before anything is defined."""
        self.require_known()
        if not (self.open or self.api):
            raise Forbidden("this API key opens only its own models, not models from models_dir")

    def may_use(self, name: str) -> bool:
        try:
            self.require_model(name)
        except (Unauthorized, Forbidden):
            return False
        return True

    def listing(self) -> str:
        """The configured models an error may list to this key, said as what they are: all of
        them for an admin key or an open gateway, else only those this key may use (as GET
        /v1/models lists them): another key's models are not this one's to learn of, nor
        how many there are."""
        usable = ", ".join(sorted(n for n in self.settings.models if self.may_use(n)))
        if self.open or self.admin:
            return f"known models: {usable or '(none configured)'}"
        return f"models this API key may use: {usable or '(none)'}"

    def require_admin(self) -> None:
        self.require_known()
        if self.open or self.admin:
            return
        if not self.settings.auth.admin_keys:
            raise Forbidden(
                "admin routes need an admin key and none is configured (auth.admin_keys)"
            )
        raise Forbidden("this route needs an admin key (auth.admin_keys)")
