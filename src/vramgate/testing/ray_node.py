"""Ray's CLI with its loopback rewrite turned off, for a cluster on 127.0.0.1 (tests, one box):
Ray would otherwise advertise this machine's network address for a node started on 127.0.0.1.
`python -m vramgate.testing.ray_node start --block --address 127.0.0.1:P ...`"""

from __future__ import annotations

import os
import sys


def _no_api_server(self, *, include_dashboard: bool | None, raise_on_failure: bool) -> None:
    self._webui_url = None


def main() -> None:
    # (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps the head and drivers on 127.0.0.1, but a worker
    # node refuses to start with it: a worker needs this rewrite turned off instead.)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray._private.services as services

    services.resolve_ip_for_localhost = lambda host: host  # type: ignore[attr-defined]
    if "--head" in sys.argv and "false" in sys.argv:  # --include-dashboard false
        # Without a dashboard the head's API server only runs usage stats, which ask cloud
        # metadata servers (169.254.169.254) where they run, reporting or not: on a test box
        # nothing may leave loopback, so it is not started (nothing of ours uses it).
        from ray._private.node import Node

        Node.start_api_server = _no_api_server  # type: ignore[method-assign]
    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", *sys.argv[1:]]
    ray_main()


if __name__ == "__main__":
    main()
