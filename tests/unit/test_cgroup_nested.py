"""vramgate/cgroup.py, _ancestors: a cgroup path that is not found under the mount falls back
to the mount itself. In a container that sees the host's path (cgroup v1 Docker without a
cgroup namespace: /proc/self/cgroup says /docker/<id>/..., the mount is the container's own
cgroup), a process in a cgroup *nested* in the container (a systemd unit's MemoryMax inside a
systemd container, `systemd-run -p MemoryMax=`, LXC) is in <mount>/<inner>: the fallback skips
the inner cgroup and its tighter limit, and the budget is the container's (here 4096 MiB
instead of 512). The suffix of the path that exists under the mount (or /proc/self/mountinfo's
root of the mount) finds it. Fake /proc and /sys trees, as tests/unit/test_cgroup.py makes."""

from __future__ import annotations

from pathlib import Path

from vramgate.cgroup import cgroup_room_mib

MIB = 1 << 20


def test_a_limit_nested_in_a_container_that_sees_the_hosts_path_counts(tmp_path: Path):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text("MemAvailable:   22000000 kB\n")
    (tmp_path / "proc/self/cgroup").write_text("4:memory:/docker/abc/system.slice/vg.service\n")
    mount = tmp_path / "sys/fs/cgroup/memory"  # the container's own cgroup, /docker/abc
    files = {
        "memory.limit_in_bytes": 4096 * MIB,
        "memory.usage_in_bytes": 0,
        "system.slice/memory.limit_in_bytes": 9223372036854771712,
        "system.slice/memory.usage_in_bytes": 0,
        "system.slice/vg.service/memory.limit_in_bytes": 512 * MIB,
        "system.slice/vg.service/memory.usage_in_bytes": 0,
    }
    for name, value in files.items():
        (mount / name).parent.mkdir(parents=True, exist_ok=True)
        (mount / name).write_text(f"{value}\n")
    assert cgroup_room_mib(tmp_path) == 512
