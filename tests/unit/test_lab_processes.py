"""The lab's process tracking: a process that ignores SIGTERM is killed, and so is its child
that lives in a session of its own (as nspawn's container init does)."""

import os
import sys
import time
from pathlib import Path

from lab.processes import spawn, start_time, stop

IGNORE_SIGTERM_AND_WAIT = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
)
STUBBORN = f"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(
    [sys.executable, "-c", {IGNORE_SIGTERM_AND_WAIT!r}], start_new_session=True
)
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(300)
"""


def test_a_process_that_ignores_sigterm_is_killed_with_its_own_session_child(tmp_path: Path):
    child_file = tmp_path / "child.pid"
    parent = spawn(
        "stubborn", [sys.executable, "-c", STUBBORN, str(child_file)], tmp_path / "stubborn.log"
    )
    deadline = time.monotonic() + 10
    while not child_file.exists() or not child_file.read_text():
        assert time.monotonic() < deadline, "the stubborn process never started its child"
        time.sleep(0.05)
    child = int(child_file.read_text())
    assert start_time(child) is not None

    stop([parent], grace_seconds=0.5)
    # This test started it, so this test reaps it (the lab's own `down` is another process).
    os.waitpid(parent.pid, 0)

    deadline = time.monotonic() + 5
    while start_time(child) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not parent.alive
    assert start_time(child) is None, "the child in its own session outlived the stop"
