"""A local Hugging Face Hub for tests: the part of its HTTP API that `huggingface_hub` uses.

Serves real files from a folder laid out as ROOT/<owner>/<repo>/<files> (symlinks followed), on
revision `main` only, whose commit hash is derived from the files' names, sizes and mtimes:
  GET  /api/models/{repo}[/revision/{rev}]    repo info with `siblings` (sizes with ?blobs=true)
  GET  /api/models/{repo}/tree/{rev}[/{path}] file listing (recursive=true walks subfolders)
  HEAD /{repo}/resolve/{rev}/{path}           X-Repo-Commit, ETag / X-Linked-Etag, sizes
  GET  /{repo}/resolve/{rev}/{path}           the file, with Range (206)
A `.gated` file in a repo folder makes it gated (described to all, its files only to `--token`);
`.private` hides it without the token. Knobs for download tests: `--bytes-per-s` (slow),
`--fail-after-bytes` (the first transfer of each file breaks off after N bytes, as a dropped
connection does), `--corrupt` (every file is served with its last byte flipped, under the listed
size and checksum). A `.names.json` file in a repo folder ({"local name": "listed name"}) lists
a file under another name, such as a hostile `../../x` or `/etc/x`.

    python -m vramgate.testing.fake_hub --root DIR --port 8090 [--token T]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".onnx", ".msgpack", ".h5")
LFS_MIN_BYTES = 10 << 20  # the Hub stores these in LFS whatever their name
CHUNK = 1 << 20
MAIN = "main"


@dataclass(frozen=True)
class HubFile:
    path: str  # inside the repo, with '/'
    local: Path
    size: int
    git_sha1: str  # the git blob id (of the LFS pointer, for LFS files)
    lfs_sha256: str | None  # None for files kept in git


class FakeHub:
    def __init__(
        self,
        root: Path,
        token: str | None,
        bytes_per_s: float,
        fail_after: int,
        corrupt: bool = False,
    ) -> None:
        self.root = root
        self.corrupt = corrupt
        self.token = token
        self.bytes_per_s = bytes_per_s
        self.fail_after = fail_after
        self.broken: set[str] = set()  # files whose first transfer already broke off
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, range) seen
        self._hashes: dict[tuple[str, int, float], tuple[str, str | None]] = {}

    # --- the repository on disk -------------------------------------------------------------

    def repo_dir(self, repo: str) -> Path | None:
        if repo.count("/") != 1 or ".." in repo.split("/"):
            return None
        folder = self.root / repo
        return folder if folder.is_dir() else None

    def files(self, folder: Path) -> list[HubFile]:
        names_file = folder / ".names.json"
        names = json.loads(names_file.read_text()) if names_file.exists() else {}
        found = []
        for local in sorted(folder.rglob("*")):
            rel = local.relative_to(folder).as_posix()
            if rel.startswith(".") or not local.is_file():
                continue
            found.append(self._describe(names.get(rel, rel), local))
        return found

    def _describe(self, rel: str, local: Path) -> HubFile:
        stat = local.stat()
        key = (str(local), stat.st_size, stat.st_mtime)
        if key not in self._hashes:
            lfs = rel.endswith(LFS_SUFFIXES) or stat.st_size >= LFS_MIN_BYTES
            digest = hashlib.sha256()
            with local.open("rb") as f:
                while block := f.read(CHUNK):
                    digest.update(block)
            sha256 = digest.hexdigest()
            if lfs:
                pointer = (
                    "version https://git-lfs.github.com/spec/v1\n"
                    f"oid sha256:{sha256}\nsize {stat.st_size}\n"
                ).encode()
                blob = pointer
            else:
                blob = local.read_bytes()
            git_sha1 = hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()
            self._hashes[key] = (git_sha1, sha256 if lfs else None)
        git_sha1, lfs_sha256 = self._hashes[key]
        return HubFile(rel, local, stat.st_size, git_sha1, lfs_sha256)

    def commit(self, files: list[HubFile]) -> str:
        listing = "\n".join(f"{f.path} {f.git_sha1}" for f in files)
        return hashlib.sha1(listing.encode()).hexdigest()

    # --- access ------------------------------------------------------------------------------

    def check(
        self, request: web.Request, repo: str, revision: str, *, content: bool = True
    ) -> tuple[Path, list[HubFile]]:
        """The repo's folder and files, or the error the Hub gives (with its X-Error-Code).

        As on the Hub, a gated repo's description is public; its files (`content`) are not.
        """
        folder = self.repo_dir(repo)
        authorized = self.token is not None and (
            request.headers.get("Authorization") == f"Bearer {self.token}"
        )
        if folder is None or ((folder / ".private").exists() and not authorized):
            raise _error(401, "RepoNotFound", f"Repository Not Found for url: {request.url}.")
        if content and (folder / ".gated").exists() and not authorized:
            raise _error(
                401,
                "GatedRepo",
                f"Access to model {repo} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
            )
        files = self.files(folder)
        if revision not in (MAIN, self.commit(files)):
            raise _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return folder, files


def _error(status: int, code: str, message: str) -> web.HTTPException:
    headers = {"X-Error-Code": code, "X-Error-Message": message}
    body = json.dumps({"error": message})
    cls = {401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound}[status]
    return cls(headers=headers, text=body, content_type="application/json")


HUB = web.AppKey("hub", FakeHub)


def _split(tail: str) -> tuple[str, str]:
    """'owner/name/rest...' -> ('owner/name', 'rest...')."""
    parts = tail.split("/", 2)
    return "/".join(parts[:2]), parts[2] if len(parts) > 2 else ""


async def repo_info(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    repo, rest = _split(request.match_info["tail"])
    revision = MAIN
    if rest.startswith("revision/"):
        revision = rest.removeprefix("revision/")
    elif rest.startswith("tree/"):
        return await tree(request, repo, rest.removeprefix("tree/"))
    elif rest:
        raise web.HTTPNotFound()
    folder, files = hub.check(request, repo, revision, content=False)
    siblings = []
    for f in files:
        sibling: dict[str, object] = {"rfilename": f.path}
        if request.query.get("blobs") == "true":
            sibling |= {"size": f.size, "blobId": f.git_sha1}
            if f.lfs_sha256:
                sibling["lfs"] = {"size": f.size, "sha256": f.lfs_sha256, "pointerSize": 134}
        siblings.append(sibling)
    gated = "manual" if (folder / ".gated").exists() else False
    return web.json_response(
        {
            "_id": hashlib.md5(repo.encode()).hexdigest()[:24],
            "id": repo,
            "modelId": repo,
            "sha": hub.commit(files),
            "private": (folder / ".private").exists(),
            "gated": gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "siblings": siblings,
        }
    )


async def tree(request: web.Request, repo: str, rest: str) -> web.Response:
    hub = request.app[HUB]
    revision, _, sub = rest.partition("/")
    _, files = hub.check(request, repo, revision)
    recursive = request.query.get("recursive", "false").lower() == "true"
    prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
    entries: list[dict[str, object]] = []
    folders: set[str] = set()
    for f in files:
        if not f.path.startswith(prefix):
            continue
        inside = f.path[len(prefix) :]
        if "/" in inside and not recursive:
            folders.add(prefix + inside.split("/", 1)[0])
            continue
        if recursive:  # every folder on the way is listed too, as the Hub does
            parts = inside.split("/")[:-1]
            folders.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
        entry: dict[str, object] = {
            "type": "file",
            "oid": f.git_sha1,
            "size": f.size,
            "path": f.path,
        }
        if f.lfs_sha256:
            entry["lfs"] = {"oid": f.lfs_sha256, "size": f.size, "pointerSize": 134}
        entries.append(entry)
    entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": p} for p in folders]
    return web.json_response(sorted(entries, key=lambda e: str(e["path"])))


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a `Range: bytes=...` header, None for the whole file."""
    if not header or not header.startswith("bytes="):
        return None
    first, _, last = header.removeprefix("bytes=").split(",")[0].strip().partition("-")
    if not first:  # the last N bytes
        return max(0, size - int(last)), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, end


async def resolve(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    repo, rest = _split(request.match_info["tail"])
    if not rest.startswith("resolve/"):
        raise web.HTTPNotFound()
    revision, _, path = rest.removeprefix("resolve/").partition("/")
    _, files = hub.check(request, repo, revision)
    found = next((f for f in files if f.path == path), None)
    if found is None:
        raise _error(404, "EntryNotFound", f"Entry not found: {path}")
    wanted = request.headers.get("Range")
    hub.requests.append((request.method, f"{repo}/{path}", wanted))
    headers = {
        "X-Repo-Commit": hub.commit(files),
        "ETag": f'"{found.git_sha1}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    if found.lfs_sha256:
        headers |= {"X-Linked-Etag": f'"{found.lfs_sha256}"', "X-Linked-Size": str(found.size)}
    span = _byte_range(wanted, found.size)
    start, end = span or (0, found.size - 1)
    length = max(0, end - start + 1)
    headers["Content-Length"] = str(length)
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{found.size}"
    response = web.StreamResponse(status=status, headers=headers)
    if request.method == "HEAD":
        await response.prepare(request)
        return response
    await response.prepare(request)
    breaks = hub.fail_after > 0 and found.path not in hub.broken and length > hub.fail_after
    sent = 0
    with found.local.open("rb") as f:
        f.seek(start)
        while sent < length:
            block = f.read(min(CHUNK // 4, length - sent))
            if not block:
                break
            if hub.corrupt and sent + len(block) == length:
                block = block[:-1] + bytes([block[-1] ^ 0xFF])
            if breaks and sent + len(block) > hub.fail_after:
                await response.write(block[: hub.fail_after - sent])
                hub.broken.add(found.path)
                assert request.transport is not None
                request.transport.close()  # the connection drops mid-file
                return response
            await response.write(block)
            sent += len(block)
            if hub.bytes_per_s > 0:
                await asyncio.sleep(len(block) / hub.bytes_per_s)
    await response.write_eof()
    return response


async def seen(request: web.Request) -> web.Response:
    """What was downloaded, for tests: [[method, repo/path, range], ...]."""
    return web.json_response(request.app[HUB].requests)


def build_app(hub: FakeHub) -> web.Application:
    app = web.Application()
    app[HUB] = hub
    app.router.add_get("/_requests", seen)
    app.router.add_get("/api/models/{tail:.+}", repo_info)
    app.router.add_route("HEAD", "/{tail:.+}", resolve)
    app.router.add_get("/{tail:.+}", resolve, allow_head=False)
    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="Folder of <owner>/<repo>/ folders.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--token", default=None, help="Token that opens gated and private repos.")
    p.add_argument("--bytes-per-s", type=float, default=0, help="Throttle downloads (0 = off).")
    p.add_argument(
        "--fail-after-bytes", type=int, default=0, help="First transfer of a file breaks here."
    )
    p.add_argument("--corrupt", action="store_true", help="Flip the last byte of every file.")
    opts = p.parse_args(argv)
    hub = FakeHub(opts.root, opts.token, opts.bytes_per_s, opts.fail_after_bytes, opts.corrupt)
    web.run_app(build_app(hub), host=opts.host, port=opts.port, print=None)


if __name__ == "__main__":
    main()
