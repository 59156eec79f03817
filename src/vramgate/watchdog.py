"""A helper process that kills every engine's process group once the gateway is gone.

The gateway writes `+PGID` / `-PGID` lines to our stdin as engines start and stop. End of input
means the gateway exited, however it died (SIGKILL included): we then SIGTERM every group still
registered, wait a moment, and SIGKILL them. PR_SET_PDEATHSIG on each engine covers its main
process; this covers the grandchildren (vLLM and SGLang workers) that PDEATHSIG does not reach.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

GRACE_S = 3.0


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal_all(groups: set[int], sig: int) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def main() -> None:
    # The gateway's terminal may send SIGINT/SIGHUP to its foreground group; we must outlive it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin:
        line = line.strip()
        if line.startswith("+"):
            groups.add(int(line[1:]))
        elif line.startswith("-"):
            groups.discard(int(line[1:]))
    _signal_all(groups, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(_alive(g) for g in groups):
        time.sleep(0.05)
    _signal_all(groups, signal.SIGKILL)


if __name__ == "__main__":
    main()
