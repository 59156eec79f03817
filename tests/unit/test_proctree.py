"""An engine's process tree, read from /proc, with real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from vramgate.gpu.proctree import process_tree

SPAWNER = """
import subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
worker = subprocess.Popen(sleeper)
escaped = subprocess.Popen(sleeper, start_new_session=True)
print(worker.pid, escaped.pid, flush=True)
time.sleep(30)
"""


def test_tree_holds_workers_in_the_group_and_children_that_left_it():
    root = subprocess.Popen(
        [sys.executable, "-c", SPAWNER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert root.stdout is not None
        worker, escaped = (int(p) for p in root.stdout.readline().split())
        time.sleep(0.1)
        tree = process_tree(root.pid)
        assert {root.pid, worker, escaped} <= tree
        assert os.getpid() not in tree
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(root.pid)], check=False)
        root.kill()
        root.wait()
