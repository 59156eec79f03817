"""An engine's process tree from /proc: vLLM and SGLang run their workers as children."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) for every process we can read."""
    table = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return table


def process_tree(root: int, table: dict[int, tuple[int, int]] | None = None) -> set[int]:
    """`root`, its descendants, and every process still in its process group."""
    table = process_table() if table is None else table
    tree = {root} | {pid for pid, (_, group) in table.items() if group == root}
    grew = True
    while grew:
        children = {pid for pid, (parent, _) in table.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return {pid for pid in tree if pid in table or pid == os.getpid()}


def tree_rss_mib(roots: list[int]) -> int:
    """Resident memory of `roots` and their trees, in MiB (what a sleeping engine holds)."""
    table = process_table()
    pids = set().union(*(process_tree(root, table) for root in roots)) if roots else set()
    total_kib = 0
    for pid in pids:
        try:
            status = (PROC / str(pid) / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
                break
    return total_kib // 1024
