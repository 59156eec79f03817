"""The host budget's default under a cgroup limit: fake /proc and /sys trees for v2 and v1, and
a real cgroup where this machine lets one be made."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vramgate.cgroup import available_mib, cgroup_room_mib

MIB = 1 << 20


def fake_root(tmp_path: Path, cgroup: str, files: dict[str, str], available_mib_: int = 22_000):
    """A root with /proc/meminfo, /proc/self/cgroup and the given files under /sys/fs/cgroup."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text(
        f"MemTotal:       24683772 kB\nMemAvailable:   {available_mib_ * 1024} kB\n"
    )
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        path = tmp_path / "sys/fs/cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_v2_limit_bounds_the_budget_less_its_working_set(tmp_path: Path):
    """A 512 MiB systemd unit using 100 MiB, 60 of it reclaimable page cache: 472 MiB, not
    the machine's 22 GB (issue 24, defect 12: a 512 MiB cgroup got a 22.9 GiB budget)."""
    unit = "system.slice/vg.service"
    root = fake_root(tmp_path, "0::/system.slice/vg.service\n", {
        f"{unit}/memory.max": f"{512 * MIB}\n",
        f"{unit}/memory.current": f"{100 * MIB}\n",
        f"{unit}/memory.stat": f"anon {40 * MIB}\nfile {60 * MIB}\ninactive_file {60 * MIB}\n",
        "system.slice/memory.max": "max\n",
    })  # fmt: skip
    assert available_mib(root) == 472


def test_an_ancestors_limit_binds_its_children(tmp_path: Path):
    """The slice allows 300 MiB, the unit in it has no limit of its own."""
    root = fake_root(tmp_path, "0::/user.slice/u.scope\n", {
        "user.slice/u.scope/memory.max": "max\n",
        "user.slice/u.scope/memory.current": f"{10 * MIB}\n",
        "user.slice/memory.max": f"{300 * MIB}\n",
        "user.slice/memory.current": f"{100 * MIB}\n",
    })  # fmt: skip
    assert cgroup_room_mib(root) == 200 and available_mib(root) == 200


def test_a_v1_memory_limit_counts_and_no_limit_leaves_memavailable(tmp_path: Path):
    """v1's "no limit" is a huge number; a container that sees the host's path has its own
    cgroup at the mount."""
    limited = fake_root(tmp_path / "a", "4:memory:/docker/abc\n2:cpu:/\n", {
        "memory/memory.limit_in_bytes": f"{1024 * MIB}\n",
        "memory/memory.usage_in_bytes": f"{300 * MIB}\n",
        "memory/memory.stat": f"cache {200 * MIB}\ntotal_inactive_file {100 * MIB}\n",
    })  # fmt: skip
    assert available_mib(limited) == 1024 - 200
    free = fake_root(tmp_path / "b", "4:memory:/\n0::/\n", {
        "memory/memory.limit_in_bytes": "9223372036854771712\n",
        "memory/memory.usage_in_bytes": f"{300 * MIB}\n",
    }, available_mib_=9000)  # fmt: skip
    assert cgroup_room_mib(free) is None and available_mib(free) == 9000


def test_no_cgroup_files_leave_memavailable(tmp_path: Path):
    root = fake_root(tmp_path, "0::/\n", {})
    assert available_mib(root) == 22_000
    (root / "proc/self/cgroup").unlink()
    assert available_mib(root) == 22_000


def own_v1_memory_cgroup() -> Path | None:
    """This process's v1 memory cgroup folder, where a child can be made in it."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        folder = Path("/sys/fs/cgroup/memory") / path.strip("/")
        if "memory" in controllers.split(",") and (folder / "memory.limit_in_bytes").exists():
            return folder
    return None


def test_a_process_in_a_real_512_mib_cgroup_gets_at_most_512_mib():
    """A real cgroup (v1, a child of this process's own), where this machine lets one be made."""
    parent = own_v1_memory_cgroup()
    child = parent / f"vramgate-test-{__import__('os').getpid()}" if parent else None
    try:
        assert child is not None
        child.mkdir()
        (child / "memory.limit_in_bytes").write_text(str(512 * MIB))
    except (AssertionError, OSError) as exc:
        pytest.skip(f"no v1 memory cgroup can be made here: {exc!r}")
    code = "import sys; sys.stdin.readline(); from vramgate.cgroup import available_mib; " \
        "print(available_mib())"  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        (child / "cgroup.procs").write_text(str(proc.pid))
        out, _ = proc.communicate("go\n", timeout=60)
    finally:
        proc.kill()
        proc.wait()
        child.rmdir()
    assert 0 < int(out) <= 512, out
