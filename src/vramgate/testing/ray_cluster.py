"""A Ray cluster on this machine, on loopback, for tests and benchmarks: a head and worker nodes
started one after another (two at once race for one socket) through `ray_node` (Ray's CLI with its
loopback rewrite off), each worker with its `vramgate-node` label and simulated GPUs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vramgate.runtimes.local import free_port

OFFLINE = {"RAY_USAGE_STATS_ENABLED": "0"}
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return bool(predicate())


def process_tree(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


class LocalRay:
    def __init__(self, root: Path) -> None:
        self.root = root  # short: Ray's socket paths live under it (108 bytes at most)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log_path = self.root / f"{name}.log"
        argv = [
            sys.executable, "-m", "vramgate.testing.ray_node", "start", "--block",
            "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
            "--dashboard-agent-listen-port", str(free_port()), *args,
        ]  # fmt: skip
        # A worker node refuses to start with the loopback switch that a driver in this
        # process set for itself (Cluster.connect): only the head is given it, by `head`.
        inherited = {k: v for k, v in os.environ.items() if k != LOOPBACK_SWITCH}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**inherited, **OFFLINE, **env},
            )  # fmt: skip
        self.procs[name] = proc

        def started() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"ray node {name} exited:\n{log_path.read_text()}")
            return "Ray runtime started" in log_path.read_text(errors="replace")

        if not _wait_until(started, 90):
            raise RuntimeError(f"ray node {name} did not start:\n{log_path.read_text()}")

    def head(self) -> None:
        env = {LOOPBACK_SWITCH: "0"}
        args = ["--head", "--port", str(self.port), "--include-dashboard", "false"]
        self._start("head", [*args, "--temp-dir", str(self.root / "ray")], env)

    def add(self, name: str, simulate_mib: str | None = None, **env: str) -> None:
        """A worker node labelled `name`, with simulated GPUs of these sizes (comma separated)."""
        if simulate_mib:
            env["VRAMGATE_SIMULATE_MIB"] = simulate_mib
        self._start(name, ["--address", self.address, "--labels", f"vramgate-node={name}"], env)

    def kill(self, name: str) -> None:
        """The node dies: SIGKILL to its `ray start` process group and its Ray workers (which
        run in groups of their own). Our agent's watchdog and the engines are left to our own
        clean-up, as on a machine whose Ray was killed."""
        proc = self.procs.pop(name)
        workers = [p for p in process_tree(proc.pid) if cmdline(p).startswith("ray::")]
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(10)

    def agent_pids(self, name: str) -> list[int]:
        """The processes of our node agents (Ray actor workers) on node `name`."""
        proc = self.procs[name]
        return [p for p in process_tree(proc.pid) if cmdline(p).startswith("ray::NodeAgent")]

    def stall(self, name: str) -> list[int]:
        """Node `name`'s agents stop answering (SIGSTOP), as in a hung NVML call: Ray itself
        still reports the node alive. Returns the stopped pids, for `resume`."""
        pids = self.agent_pids(name)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    def resume(self, pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            tree = process_tree(proc.pid)
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait(10)
