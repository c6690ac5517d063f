"""``desimirror jupyter``: the data model environment, the data, and JupyterLab.

This is the container's entry point, and works the same on a laptop or an EC2 instance:

1. the data: a local copy (``--local DIR``, or a non-empty ``--data`` directory, which is
   how ``docker run --volume DIR:/home/desi/desidata:ro`` arrives), else the bucket
   FUSE-mounted at ``--data``;
2. the environment: the data model variables for the release (``$DESI_ROOT``...) and,
   with ``--nersc-links``, the ``/global/cfs/cdirs/desi/...`` paths;
3. JupyterLab bound to 127.0.0.1 (``--ip`` to change it, as a container must) with a
   token (random unless given), its URL printed with ``--public-ip`` in place of the
   address when one is given, as the original image did for EC2.

The launcher stays as JupyterLab's parent: it prints the URL again once JupyterLab answers
(after its start-up log, so the URL is the last thing on the screen), passes SIGTERM/SIGHUP
on to JupyterLab, and, with a mount, unmounts when JupyterLab exits, however it exits.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from desimirror import processes
from desimirror.access.env import (
    data_model_env,
    detect_layout,
    make_links,
    normalize_release,
    plan_nersc_links,
)
from desimirror.access.mount import Mounted, find_mount, mount_bucket, stop
from desimirror.errors import UsageError
from desimirror.storage.s3client import DEFAULT_REGION
from desimirror.units import format_size

WELCOME = "welcome.ipynb"
#: The JupyterLab 4 plugin that asks a first-time user "Would you like to get notified
#: about official Jupyter news?" and checks for updates: a prompt about JupyterLab, not
#: about the data, on every fresh container. Disabled as `jupyter labextension disable`
#: would, but in a config directory of the launcher's own, leaving the user's alone.
NEWS_PLUGIN = "@jupyterlab/apputils-extension:announcements"
READY_TIMEOUT = 120.0  # seconds to wait for JupyterLab to answer before saying the URL again


@dataclass
class JupyterOptions:
    """Everything ``desimirror jupyter`` decides from its options and the config."""

    release: str
    data_dir: Path
    local: Path | None = None
    bucket: str = "s3://desidata"
    endpoint_url: str | None = None
    region: str = DEFAULT_REGION
    no_sign_request: bool = True
    cache_dir: Path = Path("~/.cache/desimirror")
    cache_size: int = 20 * 10**9
    state_dir: Path = Path("~/.local/state/desimirror")
    fuse_device: str = "/dev/fuse"
    ip: str = "127.0.0.1"
    port: int = 8888
    public_ip: str | None = None
    token: str | None = None
    no_token: bool = False
    notebook_dir: Path = Path(".")
    nersc_links: bool = False
    nersc_root: Path = Path("/global/cfs/cdirs/desi")
    no_mount: bool = False
    jupyter_args: Sequence[str] = field(default_factory=tuple)


def welcome_notebook() -> bytes:
    """The welcome notebook shipped with the package."""
    return resources.files("desimirror").joinpath("notebooks", WELCOME).read_bytes()


def _check_ip(value: str, what: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise UsageError(f"invalid {what} {value!r}: expected an IP address") from None
    return value


def server_url(opts: JupyterOptions, token: str | None) -> str:
    """The URL to open: the public IP when given (EC2), else the loopback address."""
    host = opts.public_ip or ("127.0.0.1" if opts.ip in ("0.0.0.0", "::") else opts.ip)
    if ":" in host:
        host = f"[{host}]"
    query = f"?token={token}" if token else ""
    return f"http://{host}:{opts.port}/lab{query}"


def jupyter_argv(opts: JupyterOptions) -> list[str]:
    """The JupyterLab command line. The token is *not* on it (see :func:`jupyter_env`)."""
    argv = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--ServerApp.ip={opts.ip}",
        f"--ServerApp.port={opts.port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={opts.notebook_dir}",
    ]
    if opts.no_token:
        argv += ["--IdentityProvider.token=", "--ServerApp.password="]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    return argv + list(opts.jupyter_args)


def jupyter_env(
    base: Mapping[str, str],
    model: Mapping[str, str],
    token: str | None,
    opts: JupyterOptions | None = None,
) -> dict[str, str]:
    """The server's (and so every kernel's) environment: the data model variables, the
    ``DESIMIRROR_*`` settings (so ``desimirror.access.data`` in a notebook reads the same bucket),
    and the token in ``JUPYTER_TOKEN``, where ``ps`` cannot see it."""
    env = dict(base)
    env.update(model)
    if opts is not None:
        env["DESIMIRROR_RELEASE"] = model.get("DESI_RELEASE", opts.release)
        env["DESIMIRROR_BUCKET"] = opts.bucket
        env["DESIMIRROR_NO_SIGN_REQUEST"] = "1" if opts.no_sign_request else "0"
        if opts.endpoint_url:
            env["DESIMIRROR_ENDPOINT_URL"] = opts.endpoint_url
        if opts.local is not None:
            env["DESIMIRROR_LOCAL"] = str(opts.local)
    env.pop("JUPYTER_TOKEN", None)
    if token:
        env["JUPYTER_TOKEN"] = token
    return env


def without_news(env: dict[str, str], state_dir: Path) -> dict[str, str]:
    """``env`` with a Jupyter config directory in front of ``JUPYTER_CONFIG_PATH`` whose
    ``labconfig/page_config.json`` disables :data:`NEWS_PLUGIN`.

    A config path entry, not the user's ``~/.jupyter``: nothing of the user's is
    rewritten, and their own settings still apply. If the directory cannot be written the
    prompt simply stays.
    """
    config_dir = state_dir.expanduser() / "jupyter-config"
    page_config = config_dir / "labconfig" / "page_config.json"
    try:
        page_config.parent.mkdir(parents=True, exist_ok=True)
        page_config.write_text(json.dumps({"disabledExtensions": {NEWS_PLUGIN: True}}) + "\n")
    except OSError as exc:
        _say(f"cannot write {page_config} ({exc.strerror or exc}); JupyterLab may ask about news")
        return env
    rest = env.get("JUPYTER_CONFIG_PATH")
    env = dict(env)
    env["JUPYTER_CONFIG_PATH"] = str(config_dir) + (os.pathsep + rest if rest else "")
    return env


def _say(message: str) -> None:
    print(f"+ {message}", file=sys.stderr, flush=True)


def _install_welcome(notebook_dir: Path) -> None:
    target = notebook_dir / WELCOME
    if target.exists():
        return
    try:
        target.write_bytes(welcome_notebook())
    except OSError as exc:  # a read-only work dir, or a build without the package data
        _say(f"no welcome notebook ({exc.strerror or exc}); continuing without it")


def prepare(opts: JupyterOptions) -> tuple[Path, Mounted | None]:
    """Find or mount the data; returns (the top of the mirror, the mount if we made one)."""
    if opts.local is not None:
        local = opts.local.expanduser()
        if not local.is_dir():
            raise UsageError(f"local data directory {local} does not exist")
        _say(f"using the local data at {local}")
        return local.absolute(), None
    data = opts.data_dir.expanduser().absolute()
    if find_mount(data) is not None:
        _say(f"using what is already mounted at {data}")
        return data, None
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        if next(os.scandir(data), None) is not None:
            _say(f"{data} is not empty: using it as the local data")
            return data, None
    bound = format_size(opts.cache_size)
    _say(f"mounting {opts.bucket} at {data} (read-only, cache bounded at {bound})")
    mounted = mount_bucket(
        opts.bucket,
        data,
        endpoint_url=opts.endpoint_url,
        region=opts.region,
        no_sign_request=opts.no_sign_request,
        cache_dir=opts.cache_dir,
        cache_size=opts.cache_size,
        state_dir=opts.state_dir,
        fuse_device=opts.fuse_device,
    )
    return data, mounted


def _releases_in(data: Path) -> str:
    try:
        names = sorted(e.name for e in os.scandir(data) if e.is_dir())
    except OSError:
        names = []
    return ", ".join(names) or "nothing"


def run(opts: JupyterOptions, *, environ: Mapping[str, str] | None = None) -> int:
    """Set up and run JupyterLab; returns its exit status."""
    if opts.no_token and opts.ip not in ("127.0.0.1", "::1"):
        raise UsageError("--no-token is only allowed with --ip 127.0.0.1: anyone could connect")
    _check_ip(opts.ip, "--ip")
    if opts.public_ip:
        _check_ip(opts.public_ip, "--public-ip")
    if not 0 < opts.port < 65536:
        raise UsageError(f"invalid --port {opts.port}")
    notebook_dir = opts.notebook_dir.expanduser().absolute()
    if not notebook_dir.is_dir():
        raise UsageError(f"notebook directory {notebook_dir} does not exist")
    opts.notebook_dir = notebook_dir
    if opts.no_mount:
        data, mounted = opts.data_dir.expanduser().absolute(), None
        _say("no mount (--no-mount): read the data from Python with desimirror.access.data")
    else:
        data, mounted = prepare(opts)
        if mounted is None and find_mount(data) is None:
            opts.local = data  # a local copy: desimirror.access.data in the notebooks reads it too
    try:
        release = normalize_release(opts.release, data)
        if not opts.no_mount and not (data / release).is_dir():
            raise UsageError(
                f"release {release} not found in {mounted.record.source if mounted else data} "
                f"(it has: {_releases_in(data)})"
            )
        model = data_model_env(release, data, detect_layout(data, release))
        _say(f"DESI_ROOT={model['DESI_ROOT']}")
        if opts.nersc_links and not opts.no_mount:
            made = make_links(plan_nersc_links(data, release, opts.nersc_root))
            _say(f"linked {len(made)} NERSC paths under {opts.nersc_root}")
        _install_welcome(notebook_dir)
        token = None if opts.no_token else (opts.token or secrets.token_hex(24))
        env = jupyter_env(os.environ if environ is None else environ, model, token, opts)
        env = without_news(env, opts.state_dir)
        argv = jupyter_argv(opts)
        _say(f"starting JupyterLab on {opts.ip}:{opts.port}; open this URL:")
        url = server_url(opts, token)
        print(url, flush=True)
        if mounted is None:
            return _supervise(argv, env, lambda: None, _ready_probe(opts, url))
        cleanup = lambda: stop(mounted, state_dir=opts.state_dir)  # noqa: E731
        return _supervise(argv, env, cleanup, _ready_probe(opts, url), "data unmounted")
    except BaseException:
        if mounted is not None:
            stop(mounted, state_dir=opts.state_dir)
        raise


def _ready_probe(opts: JupyterOptions, url: str) -> Callable[[subprocess.Popen], None]:
    """Print the URL again once JupyterLab answers: its start-up log is a screenful that
    pushes the first one out of sight, and the URL is what the user needs."""
    host = "127.0.0.1" if opts.ip in ("0.0.0.0", "::") else opts.ip
    status = f"http://{f'[{host}]' if ':' in host else host}:{opts.port}/api/status"

    def probe(child: subprocess.Popen) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while child.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(status, timeout=2).close()
            except urllib.error.HTTPError:
                pass  # 403 without the token: it is up
            except OSError:
                time.sleep(0.3)
                continue
            time.sleep(0.5)  # let its own lines about the URLs come out first
            if child.poll() is None:
                _say("JupyterLab is ready; open this URL:")
                print(url, flush=True)
            return

    return probe


def _supervise(
    argv: list[str],
    env: dict[str, str],
    cleanup: Callable[[], None],
    on_start: Callable[[subprocess.Popen], None] | None = None,
    cleaned: str = "",
) -> int:
    """Run JupyterLab as a child; forward termination signals; always clean up after."""
    child = subprocess.Popen(argv, env=env)
    if on_start is not None:
        threading.Thread(target=on_start, args=(child,), daemon=True).start()

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, forward)
    # Ctrl-C reaches JupyterLab from the terminal directly (same process group); it asks
    # for confirmation there, so the launcher must not die on it first.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:
            processes.stop(child, grace=10)
        cleanup()
        _say(f"stopped{'; ' + cleaned if cleaned else ''}")


def find_jupyter() -> bool:
    """True when JupyterLab can be started by this interpreter."""
    import importlib.util

    return importlib.util.find_spec("jupyterlab") is not None or bool(shutil.which("jupyter-lab"))
