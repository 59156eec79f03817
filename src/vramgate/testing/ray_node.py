"""Ray's CLI with its loopback rewrite turned off, for a cluster on 127.0.0.1 (tests, one box):
Ray would otherwise advertise this machine's network address for a node started on 127.0.0.1.
`python -m vramgate.testing.ray_node start --block --address 127.0.0.1:P ...`"""

from __future__ import annotations

import os
import sys


def main() -> None:
    # (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps the head and drivers on 127.0.0.1, but a worker
    # node refuses to start with it: a worker needs this rewrite turned off instead.)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray._private.services as services

    services.resolve_ip_for_localhost = lambda host: host  # type: ignore[attr-defined]
    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", *sys.argv[1:]]
    ray_main()


if __name__ == "__main__":
    main()
