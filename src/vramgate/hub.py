"""The Hugging Face Hub as vramgate reads it: repository ids, metadata without the weights.

All access goes through `huggingface_hub`, so `HF_TOKEN` and `HF_ENDPOINT` (a mirror, or the
local hub the tests run) apply as they do for every other tool.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

# owner/name, as the Hub allows them (letters, digits, '-', '_', '.'; no '--' or '..').
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
HUB_URL = re.compile(r"^https?://[^/]+/(?P<repo>[^/]+/[^/?#]+)")
METADATA_TIMEOUT_S = 10.0


class HubError(Exception):
    """The Hub could not answer; the message says why (not found, gated, unreachable)."""


def endpoint() -> str | None:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def is_hub_id(source: str) -> bool:
    """`owner/name` that is not a local path."""
    return bool(REPO_ID.match(source)) and ".." not in source and not Path(source).exists()


def repo_id(value: str) -> str:
    """A repository id from an id or a hub URL (https://huggingface.co/owner/name/tree/main)."""
    value = value.strip()
    url = HUB_URL.match(value)
    if url:
        value = url["repo"]
    if not REPO_ID.match(value) or ".." in value:
        raise HubError(f"{value!r} is not a repository id (owner/name) or a hub URL")
    return value


def describe_error(exc: Exception, repo: str) -> str:
    """One line an operator can act on, for any failure of a hub call."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return f"{repo} is gated: accept its terms on the Hub and set HF_TOKEN"
    if isinstance(exc, RepositoryNotFoundError):
        return f"{repo} was not found on the Hub (or is private and HF_TOKEN does not open it)"
    if isinstance(exc, RevisionNotFoundError):
        return f"{repo}: no such revision"
    if isinstance(exc, LocalEntryNotFoundError):
        return f"{repo}: the Hub cannot be reached and nothing is cached"
    return f"{repo}: {type(exc).__name__}: {exc}".splitlines()[0]


def repo_safetensors(
    repo: str, revision: str | None = None
) -> tuple[dict[str, int], dict[str, Any] | None]:
    """Parameters per dtype (from the safetensors headers, read by Range requests) and the
    repository's config.json, if it has one. No weights are downloaded."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, NotASafetensorsRepoError

    api = HfApi(endpoint=endpoint())
    try:
        # Asked first so that a missing or gated repository is named as such (the safetensors
        # lookup alone would only say it found no weights).
        api.model_info(repo, revision=revision, timeout=METADATA_TIMEOUT_S)
        meta = api.get_safetensors_metadata(repo, revision=revision, timeout=METADATA_TIMEOUT_S)
    except NotASafetensorsRepoError as exc:
        raise HubError(f"{repo} has no safetensors weights to estimate from") from exc
    except Exception as exc:
        raise HubError(describe_error(exc, repo)) from exc
    config: dict[str, Any] | None = None
    try:
        path = hf_hub_download(repo, "config.json", revision=revision, endpoint=endpoint())
        config = json.loads(Path(path).read_text())
    except EntryNotFoundError:
        config = None
    except Exception as exc:
        raise HubError(describe_error(exc, repo)) from exc
    return {str(dtype): count for dtype, count in meta.parameter_count.items()}, config
