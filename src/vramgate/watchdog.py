"""A helper process that kills every engine's process group, and removes every engine container,
once the gateway is gone.

The gateway writes `+PGID` / `-PGID` lines to our stdin as engines start and stop, `cID` / `xID`
for containers, and `iINSTANCE` once it uses Docker. End of input means the gateway exited,
however it died (SIGKILL included): we then SIGTERM every group still registered, wait a moment,
and SIGKILL them; containers (those registered, and any other with this instance's label: one
created just as the gateway died) are removed by force. PR_SET_PDEATHSIG on each engine covers its
main process; this covers the grandchildren (vLLM and SGLang workers) that PDEATHSIG does not
reach, and containers, which neither reaches.
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


def _remove_containers(ids: set[str], instance: str | None) -> None:
    import threading

    import docker

    client = docker.from_env(timeout=10)
    if instance is not None:
        labelled = client.containers.list(
            all=True, filters={"label": f"io.vramgate.instance={instance}"}, sparse=True
        )
        ids |= {str(c.id) for c in labelled}

    def remove(container_id: str) -> None:
        with contextlib.suppress(Exception):
            client.api.remove_container(container_id, force=True)

    threads = [threading.Thread(target=remove, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)


def main() -> None:
    # The gateway's terminal may send SIGINT/SIGHUP to its foreground group; we must outlive it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    groups: set[int] = set()
    containers: set[str] = set()
    instance: str | None = None
    for line in sys.stdin:
        line = line.strip()
        if line.startswith("+"):
            groups.add(int(line[1:]))
        elif line.startswith("-"):
            groups.discard(int(line[1:]))
        elif line.startswith("c"):
            containers.add(line[1:])
        elif line.startswith("x"):
            containers.discard(line[1:])
        elif line.startswith("i"):
            instance = line[1:]
    if containers or instance is not None:
        with contextlib.suppress(Exception):  # no daemon: nothing of ours can be running there
            _remove_containers(containers, instance)
    _signal_all(groups, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(_alive(g) for g in groups):
        time.sleep(0.05)
    _signal_all(groups, signal.SIGKILL)


if __name__ == "__main__":
    main()
