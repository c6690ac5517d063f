"""Stopping the processes desimirror starts: one way, by PID, bounded, with what they started.

Every child (s5cmd, the crawl's writer, rclone behind a mount, the embedded SeaweedFS,
JupyterLab) is stopped here: optionally a wait for it to end by itself, then SIGTERM and a
grace period, then SIGKILL, each wait bounded, and the same for the processes it started
(psutil finds them). A process is only ever signalled by its PID, never looked up by name;
``is_ours`` lets a caller that knows a PID only from a file (a mount's client) check it is
still that process before signalling anything.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable

import psutil

#: After SIGKILL, how long to wait for the kernel to take the process away.
KILL_WAIT_SECONDS = 10.0


def stop(
    target: int | subprocess.Popen,
    *,
    grace: float = 5.0,
    wait_first: float = 0.0,
    terminate_first: bool = True,
    is_ours: Callable[[psutil.Process], bool] | None = None,
) -> bool:
    """Stop ``target`` (a PID or a Popen) and its descendants; True if it is gone now.

    ``wait_first`` seconds are given for it to exit by itself (a client told to stop by
    other means); ``terminate_first=False`` sends SIGKILL at once (a process with no state
    worth a graceful stop). A Popen is reaped, so its ``returncode`` is set.
    """
    pid = target.pid if isinstance(target, subprocess.Popen) else target
    try:
        main = psutil.Process(pid)
        if is_ours is not None and not is_ours(main):
            return True  # the PID now belongs to someone else: ours is gone
        family = [main, *main.children(recursive=True)]
    except psutil.Error:
        _reap(target)
        return True
    if wait_first > 0 and not _wait(target, family, wait_first):
        return True
    phases = [(psutil.Process.terminate, grace)] if terminate_first else []
    phases.append((psutil.Process.kill, KILL_WAIT_SECONDS))
    for send, timeout in phases:
        for process in family:
            with contextlib.suppress(psutil.Error):
                send(process)
        if not _wait(target, family, timeout):
            return True
    return False


def _wait(target: int | subprocess.Popen, family: list[psutil.Process], timeout: float) -> bool:
    """Wait up to ``timeout`` for the whole family to end; True if any is still alive."""
    if isinstance(target, subprocess.Popen):
        with contextlib.suppress(subprocess.TimeoutExpired):
            target.wait(timeout=timeout)
        rest = family[1:]
        _, alive = psutil.wait_procs(rest, timeout=0 if target.poll() is None else timeout)
        return target.poll() is None or bool(alive)
    _, alive = psutil.wait_procs(family, timeout=timeout)
    return bool(alive)


def _reap(target: int | subprocess.Popen) -> None:
    if isinstance(target, subprocess.Popen):
        with contextlib.suppress(subprocess.TimeoutExpired):
            target.wait(timeout=1.0)
