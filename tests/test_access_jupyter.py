"""``desimirror jupyter``: a real JupyterLab over a real mount, driven through its HTTP API.

The welcome notebook is executed in a kernel started by the server (the kernels REST API
and the channels websocket, as the browser does), so it sees exactly the environment the
launcher gave the server: ``$DESI_ROOT`` on the FUSE mount. The server, the kernel and
the mount are stopped by PID and path, also when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from access_helpers import ReleaseBucket, needs_fuse
from desimirror.access.mount import find_mount
from helpers import DESIMIRROR, assert_clean_error, run_cli

pytest_plugins = ["access_fixtures"]
pytestmark = [pytest.mark.s3]

TILES = "spectro/redux/fuji/tiles-fuji.fits"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"token {token}")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # noqa: ARG002 - keep the 302 visible
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location", "")


class Launched:
    """A ``desimirror jupyter`` process: its URL line, its port, how to stop it."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [DESIMIRROR, "jupyter", *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,
            )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()  # the launcher prints it first
        match = re.match(r"http://([^:/]+):(\d+)/lab\?token=(\w+)$", self.url)
        assert match, f"no URL printed: {self.url!r}\n{log.read_text()}"
        self.host, self.port, self.token = match.group(1), int(match.group(2)), match.group(3)
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if _get(self.base + "/api/status", self.token)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("JupyterLab did not answer:\n" + self.log.read_text())

    def stop(self) -> int | None:
        """SIGTERM the launcher (as ``docker stop`` does); SIGKILL its group if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode


@pytest.fixture
def launch(tmp_path: Path) -> Iterator:
    started: list[Launched] = []

    def start(args: list[str], env: dict[str, str]) -> Launched:
        launched = Launched(args, env, tmp_path / f"jupyter-{len(started)}.log")
        started.append(launched)
        return launched

    yield start
    for launched in started:
        launched.stop()
        if launched.proc.poll() is None:  # pragma: no cover - last resort
            os.killpg(launched.proc.pid, signal.SIGKILL)


def execute_in_kernel(base: str, token: str, cells: list[str], timeout: float = 120) -> list:
    """Run code cells in a new kernel of the server; returns each cell's outputs.

    The kernels REST API starts the kernel; the channels websocket carries
    ``execute_request`` messages and brings back iopub outputs, as in the browser.
    """
    import websocket  # websocket-client, a dependency of jupyter_server

    request = urllib.request.Request(
        base + "/api/kernels",
        data=json.dumps({"name": "python3"}).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        kernel = json.load(response)["id"]
    ws_url = base.replace("http", "ws") + f"/api/kernels/{kernel}/channels"
    conn = websocket.create_connection(
        ws_url, header=[f"Authorization: token {token}"], timeout=timeout
    )
    session = uuid.uuid4().hex
    results = []
    try:
        for code in cells:
            msg_id = uuid.uuid4().hex
            conn.send(
                json.dumps(
                    {
                        "header": {
                            "msg_id": msg_id,
                            "msg_type": "execute_request",
                            "session": session,
                            "username": "test",
                            "version": "5.3",
                        },
                        "parent_header": {},
                        "metadata": {},
                        "content": {
                            "code": code,
                            "silent": False,
                            "store_history": True,
                            "user_expressions": {},
                            "allow_stdin": False,
                            "stop_on_error": True,
                        },
                        "channel": "shell",
                        "buffers": [],
                    }
                )
            )
            outputs, idle, replied = [], False, False
            while not (idle and replied):
                msg = json.loads(conn.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg["header"]["msg_type"]
                if kind == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
                elif kind == "execute_reply":
                    replied = True
                elif kind in ("stream", "display_data", "execute_result", "error"):
                    outputs.append({"type": kind, **msg["content"]})
            results.append(outputs)
    finally:
        conn.close()
        delete = urllib.request.Request(
            base + f"/api/kernels/{kernel}",
            headers={"Authorization": f"token {token}"},
            method="DELETE",
        )
        urllib.request.urlopen(delete, timeout=30).close()
    return results


def _text(outputs: list) -> str:
    return "".join(o.get("text", "") for o in outputs if o["type"] == "stream")


@needs_fuse
def test_jupyter_streams_the_release_runs_the_welcome_notebook_and_unmounts(
    synth_bucket: ReleaseBucket, access_env: dict[str, str], tmp_path: Path, launch
) -> None:
    release_bucket = synth_bucket  # desimirror synth's FITS, in the layout make demo uploads
    data = tmp_path / "desidata"
    notebooks = tmp_path / "work"
    notebooks.mkdir()
    nersc = tmp_path / "global/cfs/cdirs/desi"
    server = launch(
        [
            "--release", "EDR", "--bucket", f"s3://{release_bucket.bucket}",
            "--endpoint-url", release_bucket.s3.endpoint_url, "--no-sign-request",
            "--data", str(data), "--port", str(_free_port()), "--notebook-dir", str(notebooks),
            "--nersc-links", "--nersc-root", str(nersc), "--cache-size", "2G",
        ],
        access_env,
    )  # fmt: skip
    assert server.host == "127.0.0.1"
    server.wait_ready()
    entry = find_mount(data)
    assert entry is not None
    assert "ro" in entry.options.split(",")

    # The token is required: the API refuses, the UI sends to the login page.
    assert _get(server.base + "/api/status")[0] == 403
    status, location = _get(server.base + "/lab")
    assert status == 302
    assert "/login" in location
    assert _get(server.base + f"/api/contents/welcome.ipynb?token={server.token}")[0] == 200

    import nbformat

    notebook = nbformat.read(notebooks / "welcome.ipynb", as_version=4)
    cells = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    nersc_path = nersc / "public/edr" / TILES
    cells.append(
        "import os, hashlib\n"
        "print(os.environ['DESI_ROOT'])\n"
        f"print(hashlib.sha256(open('{nersc_path}', 'rb').read()).hexdigest())\n"
        "print(os.environ['DESI_TARGET'])"
    )
    results = execute_in_kernel(server.base, server.token, cells)
    errors = [o for outputs in results for o in outputs if o["type"] == "error"]
    assert not errors, errors
    assert f"DESI_ROOT            {data}/edr" in _text(results[0])
    assert "B_FLUX" in "".join(_text(r) for r in results)  # hdul.info() listed the HDUs
    assert any("image/png" in o.get("data", {}) for r in results for o in r), "no plot"
    import hashlib

    local = hashlib.sha256((release_bucket.local / "edr" / TILES).read_bytes()).hexdigest()
    assert _text(results[-1]).split() == [f"{data}/edr", local, f"{data}/target"]

    assert server.stop() == 0  # JupyterLab shut down cleanly on the forwarded SIGTERM
    assert find_mount(data) is None, "the launcher must unmount when JupyterLab exits"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_jupyter_with_a_local_copy_says_the_url_again_after_the_start_up_log(
    release_bucket: ReleaseBucket, access_env: dict[str, str], tmp_path: Path, launch
) -> None:
    notebooks = tmp_path / "nb"
    notebooks.mkdir()
    server = launch(
        [
            "--release", "edr", "--local", str(release_bucket.local), "--port",
            str(_free_port()), "--notebook-dir", str(notebooks), "--public-ip", "203.0.113.7",
        ],
        access_env,
    )  # fmt: skip
    assert server.host == "203.0.113.7"  # printed for the user, as on EC2
    server.wait_ready()
    # The same URL once more, after JupyterLab's log (stderr) said it is serving.
    deadline = time.monotonic() + 30
    while "JupyterLab is ready" not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "JupyterLab is ready; open this URL" in server.log.read_text()
    assert server.proc.stdout is not None
    assert server.proc.stdout.readline().strip() == server.url
    log = server.log.read_text()
    assert log.rindex("is running at") < log.rindex("JupyterLab is ready"), log
    # JupyterLab is the launcher's child, with the environment set.
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text()
    child = int(children.split()[0])
    cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
    assert b"jupyterlab" in cmdline
    environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
    assert f"DESI_ROOT={release_bucket.local}/edr".encode() in environ
    assert not any(arg.startswith(b"--IdentityProvider.token") for arg in cmdline)
    assert _get(server.base + "/api/status")[0] == 403
    assert (notebooks / "welcome.ipynb").is_file()
    assert server.stop() == 0


def test_jupyter_refuses_unsafe_or_wrong_options(
    release_bucket: ReleaseBucket, access_env: dict[str, str], tmp_path: Path
) -> None:
    local = str(release_bucket.local)
    proc = run_cli("jupyter", "--local", local, "--ip", "0.0.0.0", "--no-token", env=access_env)
    assert_clean_error(proc, "--no-token is only allowed")
    proc = run_cli("jupyter", "--local", local, "--release", "dr7", env=access_env)
    assert_clean_error(proc, "unknown release 'dr7'")
    proc = run_cli("jupyter", "--local", str(tmp_path / "nope"), env=access_env)
    assert_clean_error(proc, "does not exist")
    proc = run_cli("jupyter", "--local", local, "--public-ip", "my-host", env=access_env)
    assert_clean_error(proc, "invalid --public-ip")


def test_kernels_get_the_data_model_and_desimirror_settings(tmp_path: Path) -> None:
    """What a notebook sees: $DESI_ROOT and friends, and the DESIMIRROR_* settings that
    make desimirror.access.data read the same bucket (the --no-mount way); the token is not in
    the command line."""
    from desimirror.access.env import data_model_env
    from desimirror.access.jupyter import JupyterOptions, jupyter_argv, jupyter_env, server_url

    opts = JupyterOptions(
        release="edr",
        data_dir=tmp_path,
        bucket="s3://desidata-test",
        endpoint_url="http://127.0.0.1:9",
        no_sign_request=True,
        ip="0.0.0.0",
        public_ip="203.0.113.7",
        no_mount=True,
    )
    env = jupyter_env(
        {"PATH": "/bin", "JUPYTER_TOKEN": "old"}, data_model_env("edr", tmp_path), "t0k", opts
    )
    assert env["DESI_ROOT"] == f"{tmp_path}/edr"
    assert env["DESIMIRROR_BUCKET"] == "s3://desidata-test"
    assert env["DESIMIRROR_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert env["DESIMIRROR_NO_SIGN_REQUEST"] == "1"
    assert env["JUPYTER_TOKEN"] == "t0k"
    assert not any("t0k" in arg for arg in jupyter_argv(opts))
    assert server_url(opts, "t0k") == "http://203.0.113.7:8888/lab?token=t0k"
