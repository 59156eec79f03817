"""Model downloads from the Hub into models_dir: background jobs with progress, cancel, resume.

`huggingface_hub` gives the file list, sizes, checksums, URLs and auth headers (HF_TOKEN,
HF_ENDPOINT); the transfer is ours, because huggingface_hub 2.x deletes a partial file when a
download fails and reports progress only every 10 MiB. Each file is written as `<name>.part`
and renamed only once its size and (for LFS files) its SHA-256 check out: nothing that looks
complete is ever half written. A dropped connection resumes where it broke (HTTP Range), and so
does the next download of the same files after a cancel, a failure or a restart.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vramgate.hub import HubError, describe_error, endpoint, repo_id
from vramgate.inventory import gguf_quantization, within

log = logging.getLogger("vramgate.downloads")
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
PARALLEL_JOBS = 2


class DownloadError(Exception):
    """A download request that cannot be carried out; the message says why."""


class Cancelled(Exception):
    """Raised inside a transfer when its job is cancelled."""


@dataclass
class RepoFile:
    path: str
    size: int | None
    sha256: str | None = None  # LFS files: the Hub's checksum of the content


@dataclass
class Job:
    id: str
    repo: str
    revision: str
    destination: Path
    files: list[RepoFile]
    state: str = "queued"  # queued, running, done, failed, cancelled
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    done_bytes: dict[str, int] = field(default_factory=dict)
    finished_files: set[str] = field(default_factory=set)
    cancel: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def bytes_total(self) -> int:
        return sum(f.size or 0 for f in self.files)

    @property
    def bytes_done(self) -> int:
        with self.lock:
            return sum(self.done_bytes.values())

    def public(self) -> dict[str, Any]:
        end = self.finished_at or time.time()
        elapsed = end - self.started_at if self.started_at else 0.0
        done = self.bytes_done
        return {
            "id": self.id,
            "repo": self.repo,
            "revision": self.revision,
            "destination": str(self.destination),
            "state": self.state,
            "error": self.error,
            "files": [
                {
                    "path": f.path,
                    "size": f.size,
                    "bytes_done": self.done_bytes.get(f.path, 0),
                    "done": f.path in self.finished_files,
                }
                for f in self.files
            ],
            "bytes_done": done,
            "bytes_total": self.bytes_total,
            "rate_bytes_per_s": round(done / elapsed) if elapsed > 0 else None,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


def select_files(
    files: list[RepoFile],
    include: list[str] | None,
    exclude: list[str] | None,
    quantization: str | None,
) -> list[RepoFile]:
    """The files a request asks for: glob `include`/`exclude`, and of the GGUF files only those
    of `quantization` (Q4_K_M matches model-Q4_K_M.gguf and its split parts)."""
    chosen = [f for f in files if not f.path.startswith(".")]
    if include:
        chosen = [f for f in chosen if any(fnmatch.fnmatch(f.path, p) for p in include)]
    if exclude:
        chosen = [f for f in chosen if not any(fnmatch.fnmatch(f.path, p) for p in exclude)]
    if quantization:
        ggufs = [f for f in chosen if f.path.lower().endswith(".gguf")]
        wanted = [f for f in ggufs if gguf_quantization(f.path) == quantization.upper()]
        if not wanted:
            found = sorted({q for f in ggufs if (q := gguf_quantization(f.path))})
            have = ", ".join(found) or "none (no GGUF files)"
            raise DownloadError(
                f"no GGUF file with quantization {quantization}; the repository has {have}"
            )
        chosen = [f for f in chosen if not f.path.lower().endswith(".gguf") or f in wanted]
    if not chosen:
        raise DownloadError("no file of the repository matches include/exclude")
    return chosen


def list_repo(repo: str, revision: str | None) -> tuple[str, list[RepoFile], Any]:
    """(commit, files with sizes, the hub's description of the repo)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint()).model_info(repo, revision=revision, files_metadata=True)
    except Exception as exc:
        raise DownloadError(describe_error(exc, repo)) from exc
    files = [
        RepoFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings or []
    ]
    for f in files:
        _check_name(repo, f.path)
    return info.sha or (revision or "main"), files, info


def _check_name(repo: str, name: str) -> None:
    """A file name from the hub is data from the network: it may only name a path inside the
    download folder (no absolute path, no `..`, no backslash or NUL games)."""
    parts = name.split("/")
    unsafe = (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\0" in name
        or any(p in ("", ".", "..") for p in parts)
        or Path(name).is_absolute()
    )
    if unsafe:
        raise DownloadError(
            f"{repo}: the hub lists a file with an unsafe name ({name!r}); nothing was downloaded"
        )


def inside(models_dir: Path, destination: str | None, repo: str) -> Path:
    """The download folder: `destination` (relative to models_dir) or models_dir/owner/name.

    Nothing may land outside models_dir: absolute paths, `..` and symlinks that lead out are
    refused.
    """
    root = models_dir.resolve()
    relative = destination if destination else repo
    if Path(relative).is_absolute():
        raise DownloadError(f"destination {relative!r} must be relative to models_dir")
    if not within(root, root / relative):
        raise DownloadError(f"destination {relative!r} is outside models_dir ({root})")
    return (root / relative).resolve()


class Downloads:
    """Download jobs of this gateway run (kept in memory; files persist on disk)."""

    def __init__(self, models_dir: Path, on_change: Callable[[Job], object] | None = None) -> None:
        self.models_dir = models_dir
        self.jobs: dict[str, Job] = {}
        self.on_change = on_change
        self._pool = ThreadPoolExecutor(PARALLEL_JOBS, thread_name_prefix="download")

    def create(
        self,
        repo: str,
        revision: str | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        quantization: str | None = None,
        destination: str | None = None,
    ) -> Job:
        """Plans a job (asks the hub for the file list: blocking, call from a thread) and
        queues it."""
        try:
            repo = repo_id(repo)
        except HubError as exc:
            raise DownloadError(str(exc)) from exc
        target = inside(self.models_dir, destination, repo)
        commit, files, _ = list_repo(repo, revision)
        chosen = select_files(files, include, exclude, quantization)
        active = [
            j
            for j in self.jobs.values()
            if j.destination == target and j.state in ("queued", "running")
        ]
        if active:
            raise DownloadError(f"{target} is being downloaded already (job {active[0].id})")
        job = Job(uuid.uuid4().hex[:12], repo, commit, target, chosen)
        self.jobs[job.id] = job
        self._pool.submit(self._run, job)
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.jobs[job_id]
        if job.state in ("queued", "running"):
            job.cancel.set()
        return job

    def close(self) -> None:
        for job in self.jobs.values():
            job.cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, job: Job) -> None:
        if job.cancel.is_set():
            self._finish(job, "cancelled", None)
            return
        job.state, job.started_at = "running", time.time()
        self._changed(job)
        try:
            job.destination.mkdir(parents=True, exist_ok=True)
            for f in job.files:
                fetch(job, f)
                with job.lock:
                    job.finished_files.add(f.path)
                self._changed(job)
        except Cancelled:
            self._finish(job, "cancelled", None)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                message = (
                    f"disk full writing {job.destination} ({exc.strerror}); "
                    f"{job.bytes_done} of {job.bytes_total} bytes were fetched. Unfinished files "
                    "are kept only as .part files and resumed by the next download"
                )
            else:
                message = f"cannot write {job.destination}: {exc.strerror or exc}"
            self._finish(job, "failed", message)
        except DownloadError as exc:
            self._finish(job, "failed", str(exc))
        except Exception as exc:
            self._finish(job, "failed", describe_error(exc, job.repo))
        else:
            self._finish(job, "done", None)

    def _finish(self, job: Job, state: str, error: str | None) -> None:
        job.state, job.error, job.finished_at = state, error, time.time()
        log.log(
            logging.WARNING if error else logging.INFO,
            "download %s of %s: %s%s", job.id, job.repo, state, f": {error}" if error else "",
        )  # fmt: skip
        self._changed(job)

    def _changed(self, job: Job) -> None:
        if self.on_change is not None:
            self.on_change(job)


CHUNK = 1 << 20
RETRIES = 5  # dropped connections resumed per file, each after a pause


def fetch(job: Job, f: RepoFile) -> None:
    """One file into job.destination: resumed from its .part file, checked, then renamed."""
    import httpx
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    final = job.destination / f.path
    if not within(job.destination.resolve(), final):  # a symlink inside that leads out
        raise DownloadError(f"{f.path}: its path leads outside {job.destination}")
    if final.is_file() and (f.size is None or final.stat().st_size == f.size):
        job.done_bytes[f.path] = final.stat().st_size  # fetched before
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    url = hf_hub_url(job.repo, f.path, revision=job.revision, endpoint=endpoint())
    for attempt in range(RETRIES + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = build_hf_headers() | ({"Range": f"bytes={have}-"} if have else {})
        try:
            with httpx.stream(
                "GET", url, headers=headers, follow_redirects=True, timeout=60
            ) as resp:
                _check_response(resp, job.repo, f.path)
                if have and resp.status_code != 206:
                    have = 0  # the server sent the whole file: start the part over
                with part.open("r+b" if have else "wb") as out:
                    out.seek(have)
                    out.truncate()
                    with job.lock:
                        job.done_bytes[f.path] = have
                    for chunk in resp.iter_bytes():  # as it arrives: nothing held back
                        if job.cancel.is_set():
                            raise Cancelled()
                        out.write(chunk)
                        with job.lock:
                            job.done_bytes[f.path] += len(chunk)
            break
        except httpx.TransportError as exc:  # refused, dropped or timed out: resume
            if attempt == RETRIES:
                raise DownloadError(
                    f"{job.repo}/{f.path}: {exc} (after {RETRIES} retries)"
                ) from exc
            log.warning("download %s/%s broke off (%s); resuming", job.repo, f.path, exc)
            time.sleep(1)
    _verify(part, f)
    part.replace(final)


def _check_response(resp: Any, repo: str, path: str) -> None:
    if resp.status_code < 400:
        return
    code = resp.headers.get("X-Error-Code", "")
    if code == "GatedRepo":
        raise DownloadError(f"{repo} is gated: accept its terms on the Hub and set HF_TOKEN")
    if code == "RepoNotFound" or resp.status_code in (401, 403):
        raise DownloadError(f"{repo} was not found on the Hub (or HF_TOKEN does not open it)")
    raise DownloadError(f"{repo}/{path}: the Hub answered HTTP {resp.status_code}")


def _verify(part: Path, f: RepoFile) -> None:
    """Size and, for LFS files, SHA-256: a mismatch deletes the part (it cannot be resumed)."""
    import hashlib

    size = part.stat().st_size
    problem = None
    if f.size is not None and size != f.size:
        problem = f"{size} bytes instead of {f.size}"
    elif f.sha256:
        digest = hashlib.sha256()
        with part.open("rb") as data:
            while block := data.read(8 * CHUNK):
                digest.update(block)
        if digest.hexdigest() != f.sha256:
            problem = "its SHA-256 does not match the Hub's"
    if problem:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{f.path}: the download is corrupt ({problem}); it was deleted")
