"""Downloads (seed design): background jobs into models_dir, their progress, cancel, and
checking a repository before fetching it."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from vramgate.api.common import admin_key
from vramgate.downloads import DownloadError, Downloads
from vramgate.errors import BadRequest, ModelNotFound
from vramgate.repo_check import verify

router = APIRouter(dependencies=[Depends(admin_key)])


class DownloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo: str = Field(validation_alias=AliasChoices("repo", "url"))  # `url`: the seed's name
    revision: str | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    quantization: str | None = None
    destination: str | None = None


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo: str
    revision: str | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    quantization: str | None = None


def downloads_of(request: Request) -> Downloads:
    return request.app.state.downloads


@router.post("/v1/models/download", status_code=202)
async def start(body: DownloadRequest, request: Request) -> JSONResponse:
    downloads = downloads_of(request)
    try:
        job = await asyncio.to_thread(downloads.create, **body.model_dump())
    except DownloadError as exc:
        raise BadRequest(str(exc)) from None
    return JSONResponse(job.public(), status_code=202)


@router.get("/v1/models/download")
async def jobs(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [j.public() for j in downloads_of(request).jobs.values()]}


@router.get("/v1/models/download/{job_id}")
async def job(job_id: str, request: Request) -> dict[str, Any]:
    return _job(request, job_id).public()


@router.delete("/v1/models/download/{job_id}")
async def cancel(job_id: str, request: Request) -> dict[str, Any]:
    _job(request, job_id)
    return downloads_of(request).cancel(job_id).public()


@router.post("/v1/models/verify-repo")
async def verify_repo(body: VerifyRequest, request: Request) -> dict[str, Any]:
    return await asyncio.to_thread(verify, **body.model_dump())


def _job(request: Request, job_id: str) -> Any:
    found = downloads_of(request).jobs.get(job_id)
    if found is None:
        raise ModelNotFound(f"no download job {job_id!r}")
    return found
