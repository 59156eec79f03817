"""One running gateway per state_dir: a lock held for the gateway's life, naming its holder.

Everything in state_dir assumes one writer: the instance id that labels this gateway's containers
(a second gateway would take it and remove the first one's live containers as its own
leftovers), learned footprints, kept KV caches, engine logs, simulated GPU usage files. So a
gateway that finds another live one on its state_dir refuses to start and names it, rather than
taking an id of its own and sharing everything else. The lock is an flock: the kernel drops it
when its holder dies, however it dies, so a killed gateway never blocks the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "gateway.lock"


class StateDirBusy(Exception):
    """Another gateway runs on this state_dir; the message names it and the fix."""


class StateDirUnusable(Exception):
    """state_dir cannot be created or written (a path under a file, no permission, a full
    disk); the message names it. `serve` goes on without it, `check --start` stops."""


class StateDirLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None

    def claim(self) -> None:
        """Holds the lock, or raises StateDirBusy naming its holder. A state_dir that cannot be
        written is not claimed (StateDirUnusable): nothing in it can be shared then either."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise self._unusable(exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateDirBusy(
                f"state_dir {self.path.parent.resolve()} is in use by another vramgate (pid "
                f"{holder}); give this one a state_dir of its own (state_dir: in the file, or "
                "VRAMGATE_STATE_DIR)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise self._unusable(exc) from None
        self._fd = fd

    def _unusable(self, exc: OSError) -> StateDirUnusable:
        return StateDirUnusable(
            f"state_dir {self.path.parent.absolute()} cannot be created or written "
            f"({exc.strerror or exc})"
        )

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # the lock goes with it
            self._fd = None
