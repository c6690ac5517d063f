"""The one way desimirror stops what it started: by PID, bounded, children included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from desimirror import processes

STUBBORN = (
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "child = subprocess.Popen([sys.executable, '-c', "
    "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); "
    "print(child.pid, flush=True); time.sleep(60)"
)


def _start(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_a_process_that_ignores_sigterm_is_killed_with_its_children() -> None:
    proc = _start(STUBBORN)
    try:
        grandchild = int(proc.stdout.readline())
        assert processes.stop(proc, grace=0.5)
        assert proc.returncode == -signal.SIGKILL
        assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() in (
            psutil.STATUS_ZOMBIE,
            psutil.STATUS_DEAD,
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_polite_process_ends_on_sigterm_and_one_that_ends_by_itself_gets_no_signal() -> None:
    polite = _start("import time; time.sleep(60)")
    assert processes.stop(polite, grace=10)
    assert polite.returncode == -signal.SIGTERM
    finishing = _start("import time; time.sleep(0.3)")
    assert processes.stop(finishing, wait_first=30, grace=10)
    assert finishing.returncode == 0


def test_a_pid_that_is_no_longer_ours_is_left_alone() -> None:
    other = _start("import time; time.sleep(60)")
    try:
        assert processes.stop(other.pid, is_ours=lambda _process: False)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_is_killed_and_reaped() -> None:
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    try:
        assert processes.stop(pid, terminate_first=False)
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped: no zombie left behind
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)
