"""Checking a Hub repository before downloading it: does it exist, is it open to us, what
would a download fetch, and what footprint would the model have, from metadata alone (the
safetensors headers, or the first megabytes of a GGUF file)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from vramgate.downloads import DownloadError, RepoFile, list_repo, select_files
from vramgate.hub import HubError, endpoint, repo_id
from vramgate.inventory import SPLIT_PART

GGUF_HEAD_BYTES = 32 << 20  # a GGUF header (metadata + tensor list) fits; weights follow it


def verify(
    repo: str,
    revision: str | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    quantization: str | None = None,
) -> dict[str, Any]:
    """Whether a repository exists and is open to us, what a download would fetch, and the
    footprint it would have, from metadata alone (safetensors headers, a GGUF file's header)."""
    from vramgate.gpu.estimate import EstimateError

    try:
        repo = repo_id(repo)
        commit, files, info = list_repo(repo, revision)
    except (HubError, DownloadError) as exc:
        return {"repo": repo, "exists": False, "error": str(exc)}
    result: dict[str, Any] = {
        "repo": repo,
        "exists": True,
        "revision": commit,
        "gated": bool(info.gated),
        "private": bool(info.private),
        "error": None,
    }
    try:
        chosen = select_files(files, include, exclude, quantization)
    except DownloadError as exc:
        return result | {"files": [], "bytes_total": 0, "error": str(exc), "estimate": None}
    result["files"] = [{"path": f.path, "size": f.size} for f in chosen]
    result["bytes_total"] = sum(f.size or 0 for f in chosen)
    try:
        estimate = _estimate_remote(repo, commit, chosen)
        result["estimate"] = None if estimate is None else estimate_dict(estimate)
    except (EstimateError, DownloadError) as exc:
        result["estimate"] = None
        result["estimate_error"] = str(exc)
    return result


def estimate_dict(estimate: Any) -> dict[str, Any]:
    return {
        "basis": estimate.basis,
        "context": estimate.context,
        "weights_mib": round(estimate.weights_mib, 1),
        "kv_cache_mib": round(estimate.kv_cache_mib, 1),
        "compute_mib": round(estimate.compute_mib, 1),
        "overhead_mib": estimate.overhead_mib,
        "total_mib": estimate.total_mib,
        "placement_mib": estimate.placement_mib,
    }


def _estimate_remote(repo: str, commit: str, files: list[RepoFile]) -> Any:
    from vramgate.gpu.estimate import estimate_gguf, estimate_hub

    ggufs = sorted(f.path for f in files if f.path.lower().endswith(".gguf"))
    if ggufs:
        if len(ggufs) > 1 and not SPLIT_PART.search(ggufs[0]):
            raise DownloadError(
                f"{len(ggufs)} GGUF files; name one `quantization` to estimate its footprint"
            )
        with tempfile.TemporaryDirectory(prefix="vramgate-gguf-") as tmp:
            return estimate_gguf(_fetch_head(repo, commit, ggufs[0], Path(tmp)))
    if any(f.path.endswith(".safetensors") for f in files):
        return estimate_hub(repo)
    return None


def _fetch_head(repo: str, commit: str, path: str, folder: Path) -> Path:
    """The first GGUF_HEAD_BYTES of a file, by Range request, in a file in `folder`."""
    import httpx
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo, path, revision=commit, endpoint=endpoint())
    headers = build_hf_headers() | {"Range": f"bytes=0-{GGUF_HEAD_BYTES - 1}"}
    head = bytearray()
    try:
        # Streamed and cut at the limit: a server that ignores Range sends the whole file,
        # which must not end up in memory (GGUF files run to tens of GiB).
        with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=60) as resp:
            resp.raise_for_status()
            for chunk in resp.iter_bytes():
                head += chunk
                if len(head) >= GGUF_HEAD_BYTES:
                    break
    except httpx.HTTPError as exc:
        raise DownloadError(f"{repo}/{path}: cannot read its header ({exc})") from exc
    copy = folder / "head.gguf"
    copy.write_bytes(bytes(head[:GGUF_HEAD_BYTES]))
    return copy
