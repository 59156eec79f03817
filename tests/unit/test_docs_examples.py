"""Every example in README.md and docs/ is checked against the code, so that none goes stale.

- a ```yaml block is a whole configuration file: it is validated by the real loader
  (`${env.NAME}` filled in with a stand-in value); a block marked ```yaml fragment is part of a
  file (a key shown on its own) and is only parsed as YAML;
- the ```yaml invalid block of docs/configuration.md is refused with the message shown after it;
- a ```python block compiles;
- every `vramgate ...` command line (in a ```bash block, or inline in backticks) is parsed by the
  real CLI (typer's parser: its command exists, its options and arguments fit; nothing runs);
  `./scripts/NAME` in a command exists;
- every HTTP route named in backticks (`GET /v1/models`, `/admin/models/{name}/load`) is served:
  a FastAPI route of `create_app`, a relayed POST, `/upstream/...`, or an engine's own route;
- every relative link points to a file that exists, and its `#anchor` to a heading there;
- docs/configuration.md names every key of the configuration's models and no key they lack.
"""

from __future__ import annotations

import re
import shlex
import typing
from pathlib import Path

import pytest
import typer
import yaml
from fastapi.routing import APIRoute
from pydantic import BaseModel
from typer.core import TyperGroup

from vramgate.api import native, passthrough
from vramgate.app import RELAYS, create_app
from vramgate.cli import app as cli_app
from vramgate.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
METHODS = ("GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS")
# A backticked path that starts here is a file, not a route.
FILE_ROOTS = ("/root/", "/models", "/etc/", "/opt/", "/var/", "/srv/", "/m/", "/usr/", "/tmp/",
              "/dev/", "/proc/", "/home/", "/mnt/")  # fmt: skip


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def blocks(kind: str) -> list[tuple[str, str]]:
    """(where, text) of every fenced block whose info string is `kind`, in every page."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match[1].strip() == kind:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{_id(page)}:{line}", match[2]))
    return found


def prose(page: Path) -> str:
    """The page without its fenced blocks (inline spans are read from this)."""
    return FENCE.sub("", page.read_text())


def test_every_page_exists_and_the_pages_are_found():
    assert len(PAGES) >= 11
    assert len(blocks("yaml")) >= 8


YAML = [(w, t, False) for w, t in blocks("yaml")] + [
    (w, t, True) for w, t in blocks("yaml fragment")
]


@pytest.mark.parametrize(
    ("where", "text", "fragment"), YAML, ids=lambda v: v if isinstance(v, str) and ":" in v else ""
)
def test_yaml_block_is_a_valid_configuration(where, text, fragment, tmp_path, monkeypatch):
    """A whole file is loaded by the real loader (a ConfigError fails it); a fragment parses."""
    if fragment:
        assert yaml.safe_load(text) is not None, where
        return
    for name in re.findall(r"\$\{env\.(\w+)\}", text):
        monkeypatch.setenv(name, "k")
    (tmp_path / "vramgate.yaml").write_text(text)
    settings = load_settings(tmp_path / "vramgate.yaml", environ={})
    assert isinstance(settings, Settings)


def test_the_error_example_is_the_loaders_message(tmp_path):
    """docs/configuration.md's ```yaml invalid block is refused with the ```text block after it."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    bad = re.search(r"```yaml invalid\n(.*?)```.*?```text\n(.*?)```", text, re.S)
    assert bad is not None
    (tmp_path / "vramgate.yaml").write_text(bad[1])
    with pytest.raises(ConfigError) as error:
        load_settings(tmp_path / "vramgate.yaml", environ={})
    assert str(error.value).replace(str(tmp_path) + "/", "") == bad[2].strip()


@pytest.mark.parametrize(("where", "text"), blocks("python"), ids=[w for w, _ in blocks("python")])
def test_python_block_compiles(where, text):
    compile(text, where, "exec")


def command_lines() -> list[tuple[str, str, bool]]:
    """Every `vramgate ...` command line: in bash blocks (comments cut) and inline spans."""
    found = []
    for where, text in blocks("bash"):
        for line in text.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if re.match(r"(\S+=\S+ )*vramgate ", line):
                found.append((where, line, False))
    for page in PAGES:
        for span in INLINE.findall(prose(page)):
            if span.startswith("vramgate ") and not span.startswith("vramgate["):
                found.append((_id(page), span, True))
    return found


def parse_command(line: str, *, inline: bool = False) -> None:
    """Parse `line` as the real CLI would (no command runs): an unknown command, a missing
    argument or an unknown option raises. Inline, `vramgate NAME` alone names a command in
    prose: the command must exist."""
    words = shlex.split(line.split(" > ")[0])
    while "=" in words[0]:  # VAR=value before the command
        words.pop(0)
    assert words[0] == "vramgate", line
    group = typer.main.get_command(cli_app)
    assert isinstance(group, TyperGroup)
    ctx = group.context_class(group, info_name="vramgate")
    name, *args = words[1:]
    command = group.get_command(ctx, name)
    assert command is not None, f"no command {name!r}: {line}"
    if args or not inline:
        command.make_context(name, args, parent=ctx)


def test_the_command_parser_refuses_what_it_should():
    """The check can fail: an unknown option, a missing argument, an unknown command."""
    for line in ("vramgate ps --bogus", "vramgate check", "vramgate serv --config x"):
        with pytest.raises(Exception):  # noqa: B017 (typer's usage errors, or no such command)
            parse_command(line)
    with pytest.raises(AssertionError):
        parse_command("vramgate chek", inline=True)
    parse_command("vramgate check", inline=True)
    parse_command("vramgate check vramgate.yaml")


@pytest.mark.parametrize(
    ("where", "line", "inline"), command_lines(), ids=[f"{w}:{c}" for w, c, _ in command_lines()]
)
def test_command_line_parses(where, line, inline):
    parse_command(line, inline=inline)


def test_scripts_named_exist():
    for where, text in blocks("bash"):
        for script in re.findall(r"\./(scripts/[\w.-]+)", text):
            assert (ROOT / script).is_file(), f"{where}: {script}"


def served_paths() -> list[tuple[str, str]]:
    """(method, path template) of the FastAPI routes create_app builds (the routers it
    includes walked, since FastAPI keeps them as included routers)."""
    found: list[tuple[str, str]] = []
    todo = list(create_app(Settings()).api.routes)
    while todo:
        route = todo.pop()
        included = getattr(route, "original_router", None)
        if included is not None:  # an included router: its own routes
            todo += included.routes
        if isinstance(route, APIRoute):
            found += [(m, re.sub(r":path\}", "}", route.path)) for m in route.methods or ()]
    return found


def _matches(template: str, path: str) -> bool:
    pattern = re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(template))
    return re.fullmatch(pattern, path) is not None


def is_served(method: str | None, path: str, routes: list[tuple[str, str]]) -> bool:
    if method is None and any(t.startswith(path.rstrip("/") + "/") for _, t in routes):
        return True  # a prefix of routes: `/v1`, `/admin`
    methods = [method] if method else list(METHODS)
    concrete = re.sub(r"\{[^}]*\}", "x", path)
    for m in methods:
        if any(m == rm and _matches(t, concrete) for rm, t in routes):
            return True
        if m == "POST" and concrete in RELAYS:
            return True
        if concrete.startswith(passthrough.PREFIX):
            return True
        if native.claims({"method": m, "path": concrete}):
            return True
    return False


ROUTE = re.compile(r"^(?:(GET|POST|DELETE|PUT|PATCH|HEAD|OPTIONS) )?(/[\w\-./{}:]*)(\?\S*)?$")


def named_routes() -> list[tuple[str, str | None, str]]:
    found = []
    for page in PAGES:
        for span in INLINE.findall(prose(page)):
            for part in span.split(", "):
                match = ROUTE.match(part.strip())
                if match is None or match[2].startswith(FILE_ROOTS):
                    continue
                if "." in match[2].rsplit("/", 1)[-1]:  # a file name: footprints.json
                    continue
                found.append((_id(page), match[1], match[2].rstrip(".")))
    return found


def test_the_route_check_refuses_what_it_should():
    routes = served_paths()
    assert is_served("GET", "/v1/models", routes)
    assert is_served(None, "/admin/models/{name}/load", routes)
    assert not is_served("GET", "/v1/chat/completions", routes)
    assert not is_served(None, "/v1/model", routes)


def test_every_route_named_is_served():
    routes = served_paths()
    named = named_routes()
    assert len(named) > 50
    missing = [f"{where}: {method or ''} {path}" for where, method, path in named
               if not is_served(method, path, routes)]  # fmt: skip
    assert not missing, "\n".join(missing)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", prose(page), re.M)}


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{_id(page)}: {target} (no file)")
            elif anchor and anchor not in anchors(dest):
                broken.append(f"{_id(page)}: {target} (no heading)")
    assert not broken, "\n".join(broken)


def config_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key path of the configuration: `gpus.reserve_mib`, `models.NAME.engine`."""
    keys = set()
    for name, field in model.model_fields.items():
        path = prefix + name
        keys.add(path)
        annotation = field.annotation
        if typing.get_origin(annotation) is dict:  # models.MODEL.engine, engines.ENGINE.binary
            value = typing.get_args(annotation)[1]
            if isinstance(value, type) and issubclass(value, BaseModel):
                keys |= config_keys(value, path + "." + name.upper().rstrip("S") + ".")
            continue
        for arg in [annotation, *typing.get_args(annotation)]:  # X, or X | None
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                keys |= config_keys(arg, path + ".")
    return keys


def test_the_configuration_reference_names_every_key():
    """docs/configuration.md's reference has a row for every key and none for a key there is
    not (rows start with the key path in backticks)."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = set(re.findall(r"^\| `([\w.]+)` \|", text, re.M))
    keys = config_keys(Settings)
    assert "models.MODEL.container.image" in keys and "engines.ENGINE.binary" in keys
    assert keys - rows == set(), "keys without a row"
    assert rows - keys == set(), "rows for no key"
