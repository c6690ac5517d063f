"""Helpers for tests that run the ``desimirror`` command as a user would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

DESIMIRROR = str(Path(sys.executable).parent / "desimirror")

#: The project's shared folder (seeds, peers, real files the original tools wrote): beside
#: the checkout, as CI lays it out, else where the development machines keep it.
SHARED = next(
    (
        p
        for p in (Path(__file__).resolve().parents[2] / "shared", Path("/work/shared"))
        if p.is_dir()
    ),
    Path("/work/shared"),
)


@dataclass(frozen=True)
class S3Endpoint:
    endpoint_url: str
    env: dict[str, str]

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env.get("AWS_REGION", "us-east-1"),
        )


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = False, **kw):
    """Run the installed ``desimirror`` console script as a user would."""
    proc = subprocess.run(
        [DESIMIRROR, *args], capture_output=True, text=True, env=env, timeout=600, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"desimirror {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user error: non-zero exit, one ``desimirror: error:`` line, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, "expected an error message on stderr"
    assert lines[-1].startswith("desimirror: error:"), proc.stderr
    assert not any(line.startswith(("Usage:", "Try ")) for line in lines), proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


def kill_once(
    victim: subprocess.Popen, ready: Callable[[], bool], timeout: float, why: str
) -> None:
    """SIGKILL ``victim`` as soon as ``ready()`` (polled, at most ``timeout`` seconds), and
    reap it; ``why`` is the failure if it ended first. It never outlives the call."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and victim.poll() is None and not ready():
            time.sleep(0.01)
        assert victim.poll() is None, why
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(timeout=30)


@contextlib.contextmanager
def local_cluster(threads_per_worker: int, env: dict[str, str] | None = None) -> Iterator:
    """A Dask ``LocalCluster`` of two worker processes on 127.0.0.1 (no dashboard), closed
    on the way out; ``env`` goes into the workers' environment."""
    import pytest

    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=threads_per_worker,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        protocol="tcp",
        env=dict(env or {}),
    )
    try:
        yield cluster
    finally:
        cluster.close()
