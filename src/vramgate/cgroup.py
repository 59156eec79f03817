"""What memory this process may still use: the least of the machine's MemAvailable and the room
its cgroup leaves (a container's limit, a systemd unit's MemoryMax), read from /proc and /sys
under a root given as a parameter, so tests hand it a fake tree.

The room a cgroup leaves is its limit less its working set: what it uses less the page cache
that the kernel would reclaim before it ran out (`inactive_file`, as the kubelet and `docker
stats` count it). Page cache is not subtracted whole: reading a model's weights fills it, and a
limit minus all of it would leave no room for the engine that read them. Limits of every
ancestor count (a slice's MemoryMax binds the units in it); cgroup v2 (`memory.max`) and v1
(`memory.limit_in_bytes`) alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

MIB = 1 << 20
UNLIMITED_V1 = 1 << 60  # v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages)
# (controllers' mount under sys/fs/cgroup, limit file, usage file, memory.stat's cache key)
V2 = ("", "memory.max", "memory.current", "inactive_file")
V1 = ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def available_mib(root: Path = Path("/")) -> int:
    """What this process may still take, in MiB: MemAvailable, or less where its cgroup (or an
    ancestor) has a limit (0 where MemAvailable cannot be read)."""
    available = read_field(root / "proc/meminfo", "MemAvailable:") // 1024  # in KiB there
    room = cgroup_room_mib(root)
    return available if room is None else min(available, room)


def cgroup_room_mib(root: Path = Path("/")) -> int | None:
    """The least room any limited cgroup this process is in leaves, in MiB; None: no limit."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rooms: list[int] = []
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "-", "")
        if controllers == "":  # the v2 hierarchy: "0::/path"
            layout = V2
        elif "memory" in controllers.split(","):
            layout = V1
        else:
            continue
        mount = root / "sys/fs/cgroup" / layout[0]
        for folder in _ancestors(mount, path):
            room = _room(folder, *layout[1:])
            if room is not None:
                rooms.append(room)
    return min(rooms) // MIB if rooms else None


def _ancestors(mount: Path, path: str) -> Iterator[Path]:
    """The cgroup's folder and its parents up to the mount. A container that sees the host's
    path (`/docker/<id>/...`) but has its own cgroup mounted finds its folder at the longest
    suffix of that path that exists under the mount: a cgroup nested in the container (a
    systemd unit's MemoryMax there) keeps its tighter limit; none found: the mount."""
    parts = [part for part in path.split("/") if part]
    folder = next(
        (
            mount.joinpath(*parts[i:])
            for i in range(len(parts))
            if mount.joinpath(*parts[i:]).is_dir()
        ),
        mount,
    )
    while True:
        yield folder
        if folder == mount or mount not in folder.parents:
            return
        folder = folder.parent


def _room(folder: Path, limit_file: str, usage_file: str, cache_key: str) -> int | None:
    """Bytes the cgroup at `folder` leaves below its limit; None: no limit there."""
    try:
        limit_text = (folder / limit_file).read_text().strip()
        if limit_text == "max" or int(limit_text) >= UNLIMITED_V1:
            return None
        usage = int((folder / usage_file).read_text().strip())
    except (OSError, ValueError):
        return None
    cache = read_field(folder / "memory.stat", cache_key + " ")  # in bytes there
    return max(0, int(limit_text) - max(0, usage - cache))


def read_field(path: Path, field: str) -> int:
    """The number after `field` at the start of one of the file's lines (0: none)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0
