"""Python client for vramgate's own routes (seed design): status, loading, downloads, inventory.

    from vramgate.client import Gateway
    gw = Gateway("http://127.0.0.1:8080", api_key="...")
    gw.load("gemma"); print(gw.loaded()); print(gw.chat("gemma", "Hello!"))

For inference proper, use the `openai` SDK pointed at `<gateway>/v1`: every OpenAI route is
relayed as it is. `chat()` and `chat_stream()` here are conveniences for scripts and tests.
`AsyncGateway` has the same methods, as coroutines (and async iterators for streams).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, TypeAdapter

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8080"


class GatewayAPIError(Exception):
    """An error answer of the gateway, in OpenAI's shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class _Result(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ModelStatus(_Result):
    name: str
    engine: str
    state: str
    pid: int | None = None
    port: int | None = None
    in_flight: int = 0
    queued: int = 0
    requests: int = 0
    starts: int = 0
    last_error: str | None = None
    footprint_mib: int | None = None
    footprint_source: str | None = None
    gpus: list[int] = []


class GpuStatus(_Result):
    index: int
    kind: str
    total_mib: int
    used_mib: int
    free_mib: int
    reserved_mib: int


class GatewayStatus(_Result):
    version: str
    uptime_s: float
    models: list[ModelStatus]
    gpus: list[GpuStatus] = []
    events: list[dict[str, Any]] = []


class LoadedModel(ModelStatus):
    id: str
    expires_at: float | None = None


class ModelStats(_Result):
    id: str
    requests: int
    served_warm: int
    needed_start: int
    hit_rate: float | None
    loads: int
    failures: int
    evictions: int


class InventoryEntry(_Result):
    name: str
    path: str
    format: str
    quantization: str | None
    engine: str
    size: int
    estimated_mib: int | None
    configured: bool


class DownloadFile(_Result):
    path: str
    size: int | None
    bytes_done: int
    done: bool


class DownloadJob(_Result):
    id: str
    repo: str
    revision: str
    destination: str
    state: str
    error: str | None
    files: list[DownloadFile]
    bytes_done: int
    bytes_total: int
    rate_bytes_per_s: int | None = None


class RepoCheck(_Result):
    repo: str
    exists: bool
    error: str | None = None
    gated: bool = False
    files: list[dict[str, Any]] = []
    bytes_total: int = 0
    estimate: dict[str, Any] | None = None


class ReloadResult(_Result):
    added: list[str]
    changed: list[str]
    removed: list[str]
    kept: list[str]
    applied: list[str] = []  # settings taken at once (host_ram_mib, kv_disk_mib)
    restart_required: list[str] = []


class _Call:
    """One request and how to read its answer: shared by the sync and async clients."""

    def __init__(
        self, method: str, path: str, parse: Callable[[Any], Any], body: Any = None, **params: Any
    ) -> None:
        self.method, self.path, self.parse, self.body = method, path, parse, body
        self.params = {k: v for k, v in params.items() if v is not None}


def _as(kind: Any, key: str | None = None) -> Callable[[Any], Any]:
    adapter = TypeAdapter(kind)
    return lambda data: adapter.validate_python(data[key] if key else data)


def _checked(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        try:
            error = resp.json()["error"]
            raise GatewayAPIError(resp.status_code, error.get("code", ""), error["message"])
        except (ValueError, KeyError, TypeError):
            raise GatewayAPIError(resp.status_code, "http_error", resp.text) from None
    return resp.json()


class _Routes:
    """The gateway's routes as calls; the clients below carry them out."""

    @staticmethod
    def status() -> _Call:
        return _Call("GET", "/gateway/status", _as(GatewayStatus))

    @staticmethod
    def models() -> _Call:
        return _Call("GET", "/v1/models", lambda d: [m["id"] for m in d["data"]])

    @staticmethod
    def loaded() -> _Call:
        return _Call("GET", "/v1/models/loaded", _as(list[LoadedModel], "data"))

    @staticmethod
    def stats() -> _Call:
        return _Call("GET", "/v1/models/stats", _as(list[ModelStats], "data"))

    @staticmethod
    def load(name: str) -> _Call:
        return _Call("POST", f"/admin/models/{name}/load", _as(ModelStatus))

    @staticmethod
    def unload(name: str) -> _Call:
        return _Call("POST", "/v1/models/unload", lambda d: d["state"], {"model": name})

    @staticmethod
    def unload_all() -> _Call:
        return _Call("POST", "/v1/models/unload-all", lambda d: d["unloaded"])

    @staticmethod
    def reload() -> _Call:
        return _Call("POST", "/admin/reload", _as(ReloadResult))

    @staticmethod
    def logs(name: str, tail: int) -> _Call:
        return _Call("GET", f"/admin/models/{name}/logs", lambda d: d["lines"], tail=tail)

    @staticmethod
    def inventory() -> _Call:
        return _Call("GET", "/v1/models/inventory", _as(list[InventoryEntry], "data"))

    @staticmethod
    def download(repo: str, **options: Any) -> _Call:
        body = {"repo": repo, **{k: v for k, v in options.items() if v is not None}}
        return _Call("POST", "/v1/models/download", _as(DownloadJob), body)

    @staticmethod
    def download_status(job_id: str) -> _Call:
        return _Call("GET", f"/v1/models/download/{job_id}", _as(DownloadJob))

    @staticmethod
    def downloads() -> _Call:
        return _Call("GET", "/v1/models/download", _as(list[DownloadJob], "data"))

    @staticmethod
    def cancel_download(job_id: str) -> _Call:
        return _Call("DELETE", f"/v1/models/download/{job_id}", _as(DownloadJob))

    @staticmethod
    def verify_repo(repo: str, **options: Any) -> _Call:
        body = {"repo": repo, **{k: v for k, v in options.items() if v is not None}}
        return _Call("POST", "/v1/models/verify-repo", _as(RepoCheck), body)

    @staticmethod
    def chat(model: str, messages: str | list[dict[str, Any]], stream: bool, **kw: Any) -> _Call:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        body = {"model": model, "messages": messages, "stream": stream, **kw}
        return _Call(
            "POST", "/v1/chat/completions", lambda d: d["choices"][0]["message"]["content"], body
        )


def _delta(line: str) -> str | None:
    """The text of one streamed chat chunk (`data: {...}`), None for anything else."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return None
    chunk = json.loads(line[6:])
    if "error" in chunk:
        error = chunk["error"]
        raise GatewayAPIError(502, error.get("code", ""), error.get("message", ""))
    choices = chunk.get("choices") or [{}]
    return (choices[0].get("delta") or {}).get("content")


class Gateway:
    """Synchronous client."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        api_key: str | None = None,
        timeout: float = 600,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def _do(self, call: _Call) -> Any:
        resp = self.http.request(call.method, call.path, json=call.body, params=call.params)
        return call.parse(_checked(resp))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def status(self) -> GatewayStatus:
        return self._do(_Routes.status())

    def models(self) -> list[str]:
        return self._do(_Routes.models())

    def loaded(self) -> list[LoadedModel]:
        return self._do(_Routes.loaded())

    def stats(self) -> list[ModelStats]:
        return self._do(_Routes.stats())

    def load(self, name: str) -> ModelStatus:
        return self._do(_Routes.load(name))

    def unload(self, name: str) -> str:
        return self._do(_Routes.unload(name))

    def unload_all(self) -> list[str]:
        return self._do(_Routes.unload_all())

    def reload(self) -> ReloadResult:
        return self._do(_Routes.reload())

    def logs(self, name: str, tail: int = 200) -> list[str]:
        return self._do(_Routes.logs(name, tail))

    def inventory(self) -> list[InventoryEntry]:
        return self._do(_Routes.inventory())

    def download(self, repo: str, **options: Any) -> DownloadJob:
        """Starts a download job: options revision, include, exclude, quantization, destination."""
        return self._do(_Routes.download(repo, **options))

    def download_status(self, job_id: str) -> DownloadJob:
        return self._do(_Routes.download_status(job_id))

    def downloads(self) -> list[DownloadJob]:
        return self._do(_Routes.downloads())

    def cancel_download(self, job_id: str) -> DownloadJob:
        return self._do(_Routes.cancel_download(job_id))

    def wait_download(
        self, job_id: str, timeout_s: float = 3600, poll_s: float = 0.5
    ) -> DownloadJob:
        """Polls a job until it is done, failed or cancelled."""
        import time

        deadline = time.monotonic() + timeout_s
        while (job := self.download_status(job_id)).state in ("queued", "running"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"download {job_id} still {job.state} after {timeout_s} s")
            time.sleep(poll_s)
        return job

    def verify_repo(self, repo: str, **options: Any) -> RepoCheck:
        """What a download would fetch and its footprint: options revision, quantization, ..."""
        return self._do(_Routes.verify_repo(repo, **options))

    def chat(self, model: str, messages: str | list[dict[str, Any]], **kw: Any) -> str:
        """The assistant's answer to `messages` (or one user message)."""
        return self._do(_Routes.chat(model, messages, False, **kw))

    def chat_stream(
        self, model: str, messages: str | list[dict[str, Any]], **kw: Any
    ) -> Iterator[str]:
        """The answer's text as it is generated, piece by piece."""
        call = _Routes.chat(model, messages, True, **kw)
        with self.http.stream("POST", call.path, json=call.body) as resp:
            if resp.status_code >= 400:
                resp.read()
                _checked(resp)
            for line in resp.iter_lines():
                if (text := _delta(line)) is not None:
                    yield text

    def events(self) -> Iterator[dict[str, Any]]:
        """State changes and decisions as they happen (GET /admin/events), until closed."""
        with self.http.stream("GET", "/admin/events", params={"recent": 0}, timeout=None) as resp:
            if resp.status_code >= 400:
                resp.read()
                _checked(resp)
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[6:])


class AsyncGateway:
    """Asynchronous client: the same methods as `Gateway`, to be awaited."""

    def __init__(self, base_url: str = "http://127.0.0.1:8080", api_key: str | None = None,
                 timeout: float = 600) -> None:  # fmt: skip
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout
        )

    async def _do(self, call: _Call) -> Any:
        resp = await self.http.request(call.method, call.path, json=call.body, params=call.params)
        return call.parse(_checked(resp))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncGateway:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def status(self) -> GatewayStatus:
        return await self._do(_Routes.status())

    async def models(self) -> list[str]:
        return await self._do(_Routes.models())

    async def loaded(self) -> list[LoadedModel]:
        return await self._do(_Routes.loaded())

    async def stats(self) -> list[ModelStats]:
        return await self._do(_Routes.stats())

    async def load(self, name: str) -> ModelStatus:
        return await self._do(_Routes.load(name))

    async def unload(self, name: str) -> str:
        return await self._do(_Routes.unload(name))

    async def unload_all(self) -> list[str]:
        return await self._do(_Routes.unload_all())

    async def reload(self) -> ReloadResult:
        return await self._do(_Routes.reload())

    async def logs(self, name: str, tail: int = 200) -> list[str]:
        return await self._do(_Routes.logs(name, tail))

    async def inventory(self) -> list[InventoryEntry]:
        return await self._do(_Routes.inventory())

    async def download(self, repo: str, **options: Any) -> DownloadJob:
        return await self._do(_Routes.download(repo, **options))

    async def download_status(self, job_id: str) -> DownloadJob:
        return await self._do(_Routes.download_status(job_id))

    async def downloads(self) -> list[DownloadJob]:
        return await self._do(_Routes.downloads())

    async def cancel_download(self, job_id: str) -> DownloadJob:
        return await self._do(_Routes.cancel_download(job_id))

    async def verify_repo(self, repo: str, **options: Any) -> RepoCheck:
        return await self._do(_Routes.verify_repo(repo, **options))

    async def chat(self, model: str, messages: str | list[dict[str, Any]], **kw: Any) -> str:
        return await self._do(_Routes.chat(model, messages, False, **kw))

    async def chat_stream(
        self, model: str, messages: str | list[dict[str, Any]], **kw: Any
    ) -> AsyncIterator[str]:
        call = _Routes.chat(model, messages, True, **kw)
        async with self.http.stream("POST", call.path, json=call.body) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                _checked(resp)
            async for line in resp.aiter_lines():
                if (text := _delta(line)) is not None:
                    yield text
