"""The status page for people at `/`: plain HTML, CSS and JavaScript, no build step."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse

from vramgate.api.common import scheduler_of

router = APIRouter()
STATIC = Path(__file__).resolve().parent.parent / "static"


@router.get("/", include_in_schema=False)
async def index(request: Request) -> FileResponse:
    if scheduler_of(request).settings.auth.status_page == "off":
        raise HTTPException(404, "the status page is off (auth.status_page: off)")
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
