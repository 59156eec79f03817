"""The container settings of `runtime: docker`, in docker-compose's spelling where it has one;
a model's own fields win over `defaults.container`, field by field."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

RuntimeKind = Literal["local", "docker"]
_VOLUME = re.compile(r"^[^:]+:/[^:]*(:(ro|rw))?$")
_SIZE = re.compile(r"^\d+[bkmg]?$", re.I)


class Container(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = Field(default=None, description="The image the engine runs in.")
    volumes: list[str] | None = Field(
        default=None, description="HOST:CONTAINER[:ro] mounts (models dir, HF cache)."
    )
    shm_size: str | None = Field(default=None, description="/dev/shm size, e.g. 8g (vLLM, NCCL).")
    ipc: str | None = Field(default=None, description="IPC mode, e.g. host.")
    network: str | None = Field(
        default=None,
        description="host (default: the engine binds 127.0.0.1:PORT on the host) or a named "
        "network, where the gateway reaches the engine by container name.",
    )
    extra: dict[str, Any] | None = Field(
        default=None, description="More options for the Docker API's container create, as is."
    )

    @field_validator("volumes")
    @classmethod
    def _check_volumes(cls, volumes: list[str] | None) -> list[str] | None:
        for volume in volumes or ():
            if not _VOLUME.match(volume):
                raise ValueError(
                    f"volume {volume!r} is not HOST:CONTAINER[:ro|:rw] with an absolute "
                    "CONTAINER path, e.g. /srv/models:/models:ro"
                )
        return volumes

    @field_validator("shm_size")
    @classmethod
    def _check_size(cls, size: str | None) -> str | None:
        if size is not None and not _SIZE.match(size):
            raise ValueError(f"shm_size {size!r} is not a size like 512m or 8g")
        return size

    def over(self, defaults: Container) -> Container:
        """These settings, each one not given here taken from `defaults`."""
        given = {k: getattr(self, k) for k in self.model_fields_set if getattr(self, k) is not None}
        return defaults.model_copy(update=given)
