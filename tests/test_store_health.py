"""A failing store is said, not silent (issue 13, item 9).

The rules of :class:`StoreHealth` are tested with a clock the test moves; the behaviour a
user sees is tested through the command against a relay that answers 500 to every PUT (a
full disk) and one that stops listening mid-upload (the server killed): the upload must
end with one clear line and exit 4 after ``--give-up-after``, with the failures recorded,
and ``status`` must show what the store answered.
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
from pathlib import Path

import pytest

from desimirror.progress import LineProgress
from desimirror.storage.health import StoreHealth, health_text
from faultproxy import FaultProxy
from helpers import DESIMIRROR, assert_clean_error, run_cli
from integrity_helpers import make_release, prepare, random_files, rows


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_only_an_unbroken_run_of_failures_gives_up() -> None:
    clock = Clock()
    health = StoreHealth(30, clock=clock, wall=clock)
    health.failure("PUT s3://b/k: InternalError (500)")
    clock.now += 29
    health.failure("PUT s3://b/k: InternalError (500)")
    assert not health.should_give_up()
    health.success()  # one answer that worked: the run of failures is over
    clock.now += 10
    health.failure("PUT s3://b/k: InternalError (500)")
    clock.now += 29
    assert not health.should_give_up()
    clock.now += 1
    assert health.should_give_up()
    assert health.failures == 3
    assert health.successes == 1


def test_the_error_rate_is_over_the_last_minute_only() -> None:
    clock = Clock()
    health = StoreHealth(300, clock=clock, wall=clock)
    health.failure("InternalError (500)")
    health.success()
    assert health.recent() == (1, 2)
    clock.now += 61
    assert health.recent() == (0, 0)
    assert health.line() is None


def test_the_line_says_rate_last_error_and_backoff_and_redacts() -> None:
    clock = Clock()
    health = StoreHealth(300, clock=clock, wall=clock)
    assert health.line() is None
    health.success()
    health.failure("PUT ...: bad Authorization: Credential=AKIDSECRET/2026 Signature=abc123")
    health.failure("PUT s3://b/k: cannot reach S3 endpoint http://127.0.0.1:1")
    health.backing_off(8)
    line = health.line()
    assert line is not None
    assert "2 of 3 transfers failed" in line
    assert "last error: PUT s3://b/k: cannot reach S3 endpoint" in line
    assert "backing off until" in line
    health.failure("Signature=abc123")
    assert "abc123" not in json.dumps(health.as_dict())
    assert health_text(health.as_dict()) is not None


def test_line_progress_prints_the_store_line_while_no_file_advances() -> None:
    out = io.StringIO()
    progress = LineProgress(interval=3600, stream=out)
    progress.start("upload", 10, 1000)
    progress.store("store: 5 of 5 transfers failed")
    progress.store("store: 6 of 6 transfers failed")  # within the interval: not repeated
    assert out.getvalue().splitlines() == ["upload: store: 5 of 5 transfers failed"]


# -- through the command --------------------------------------------------------------------


def _release(tmp_path: Path, count: int = 40) -> tuple[Path, Path]:
    root = tmp_path / "edr"
    make_release(root, random_files(21, count, low=100, high=2000))
    db = tmp_path / "m.db"
    prepare(root, db, "--max-files", "5")
    return root, db


def _upload(
    db: Path, bucket: str, endpoint: str, env: dict, *extra: str, backend: str = "native"
) -> subprocess.Popen:
    argv = [DESIMIRROR, "upload", "--db", str(db), "--bucket", f"s3://{bucket}"]
    argv += ["--endpoint-url", endpoint, "--backend", backend, "--workers", "2"]
    argv += ["--retries", "20", "--backoff", "0.2", *extra]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    """Wait for the upload, bounded: without giving up, 20 retries a file would take hours."""
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the upload did not give up:\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_gave_up(done: subprocess.CompletedProcess, db: Path, env: dict, cause: str) -> None:
    assert done.returncode == 4, done.stderr
    assert_clean_error(done, "giving up: the S3 store at", "answered nothing but failures", cause)
    assert "store: " in done.stderr  # the progress said what the store answered meanwhile
    assert rows(db, "SELECT count(*) FROM failures WHERE reason = 'error'")[0][0] >= 1
    status = json.loads(run_cli("status", "--db", str(db), "--json", env=env).stdout)
    health = status["store"]["health"]
    assert health["gave_up"] is True
    assert health["failures"] >= 1
    assert cause in health["last_error"]
    text = run_cli("status", "--db", str(db), env=env, check=True).stdout
    assert "store    " in text
    assert "the upload gave up" in text
    assert cause in text


@pytest.mark.s3
@pytest.mark.parametrize("backend", ["crt", "s5cmd"])
def test_a_store_answering_500_to_every_put_is_given_up_on(tmp_path, s3, bucket, cli_env, backend):
    _, db = _release(tmp_path)
    with FaultProxy(s3.endpoint_url, rates={"error500": 1.0}, methods={"PUT"}) as proxy:
        upload = _upload(
            db, bucket, proxy.endpoint_url, cli_env, "--give-up-after", "3s", backend=backend
        )
        done = _finish(upload)
    _assert_gave_up(done, db, cli_env, "InternalError")
    assert rows(db, "SELECT count(*) FROM uploads")[0][0] == 0


@pytest.mark.s3
def test_a_server_killed_mid_upload_is_given_up_on(tmp_path, s3, bucket, cli_env):
    _, db = _release(tmp_path)
    proxy = FaultProxy(s3.endpoint_url).start()
    killed = threading.Event()

    def kill_after_some(_key: str) -> None:
        if sum(proxy.puts.values()) >= 6 and not killed.is_set():
            killed.set()
            threading.Thread(target=proxy.stop, daemon=True).start()  # now: refused

    proxy.on_put = kill_after_some
    try:
        done = _finish(_upload(db, bucket, proxy.endpoint_url, cli_env, "--give-up-after", "3s"))
    finally:
        proxy.stop()
    assert killed.is_set()
    _assert_gave_up(done, db, cli_env, "cannot reach S3 endpoint")
    # what the store confirmed before it died stays done; the rest is pending, not lost
    sent = rows(db, "SELECT count(*) FROM uploads")[0][0]
    status = json.loads(run_cli("status", "--db", str(db), "--json", env=cli_env).stdout)
    assert status["done_files"] == sent
    assert status["pending_files"] > 0


def test_give_up_after_takes_a_duration() -> None:
    import click

    from desimirror.cli.common import DURATION

    assert [DURATION.convert(v, None, None) for v in ("300", "300s", "5m", "1h")] == [
        300.0,
        300.0,
        300.0,
        3600.0,
    ]
    for bad in ("soon", "0s", "-5", "inf"):
        with pytest.raises(click.BadParameter):
            DURATION.convert(bad, None, None)
