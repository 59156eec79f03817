"""An engine's output, wherever it runs: its last lines in memory (error messages quote them), its
log file under state_dir, and the live readers of the admin log stream."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from pathlib import Path
from typing import TextIO

from vramgate.events import Fanout

logger = logging.getLogger("vramgate.runtime")
LOG_LINES_KEPT = 400


class EngineOutput:
    """Whatever happens to the file, lines keep being taken: an engine whose output is not drained
    blocks on its next write and stops serving. So a log that cannot be written (full disk,
    unwritable state_dir) is reported once and dropped; the ring buffer goes on."""

    def __init__(self, name: str, log_path: Path, live: Fanout[str] | None) -> None:
        self.name = name
        self.log_path = log_path
        self.live = live
        self.lines: deque[str] = deque(maxlen=LOG_LINES_KEPT)
        self.count = 0  # lines taken so far: a reader elsewhere fetches from its own count
        self._log: TextIO | None = None

    def open(self, header: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("a", encoding="utf-8", errors="replace")
        except OSError as exc:
            self._failed(exc)
            return
        self._write(f"--- {stamp} vramgate started {header}")

    def add(self, line: str) -> None:
        self.count += 1
        self.lines.append(line)
        if self.live is not None:
            self.live.publish(line)
        self._write(line)

    def close(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def tail(self, n: int = 20) -> list[str]:
        return list(self.lines)[-n:]

    def since(self, cursor: int) -> list[str]:
        """The kept lines after the first `cursor` (older ones may have left the ring)."""
        kept = list(self.lines)
        first = self.count - len(kept)  # the number of the oldest kept line
        return kept[max(0, cursor - first) :]

    def _write(self, line: str) -> None:
        if self._log is None:
            return
        try:
            self._log.write(line + "\n")
            self._log.flush()
        except OSError as exc:
            self._failed(exc)
            self.close()

    def _failed(self, exc: OSError) -> None:
        logger.warning(
            "model '%s': cannot write its log %s (%s); keeping its output in memory only",
            self.name, self.log_path, exc.strerror or exc,
        )  # fmt: skip
        self.count += 1
        self.lines.append(f"[vramgate: log file unavailable: {exc.strerror or exc}]")
