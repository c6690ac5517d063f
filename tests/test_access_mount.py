"""``desimirror mount`` / ``unmount``: a real rclone FUSE mount of a real (public) S3.

Reads go through the mount with ``$DESI_ROOT`` paths and are compared with the files the
bucket was made from; what the server sends is counted by a relay in front of it.
Every mount is detached in a fixture, also when a test fails.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pwd
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from astropy.io import fits

from access_helpers import COADD, RAW, TARGETS, ReleaseBucket, needs_fuse
from desimirror.access.mount import find_mount, load_record, mount_bucket, stop
from desimirror.dev.relay import CountingProxy
from helpers import DESIMIRROR, assert_clean_error, run_cli

pytest_plugins = ["access_fixtures"]
pytestmark = [pytest.mark.s3]

MB = 10**6


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _usage(directory: Path) -> int:
    """Bytes actually allocated under ``directory`` (cache files are sparse)."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


@needs_fuse
def test_mount_serves_the_release_read_only_at_desi_root_paths(
    release_bucket: ReleaseBucket,
    access_env: dict[str, str],
    tmp_path: Path,
    cleanup_mounts: list[Path],
) -> None:
    mp = tmp_path / "desidata"
    cleanup_mounts.append(mp)
    endpoint = release_bucket.s3.endpoint_url
    proc = run_cli(
        "mount", f"s3://{release_bucket.bucket}", str(mp), "--endpoint-url", endpoint,
        "--no-sign-request", "--cache-size", "1G", env=access_env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "mounted s3://desidata-test read-only" in proc.stdout
    entry = find_mount(mp)
    assert entry is not None
    assert entry.fstype == "fuse.rclone"
    assert "ro" in entry.options.split(",")

    # DESI code: the environment from `desimirror env`, then files by data model paths.
    python = shlex.quote(sys.executable)  # the venv's, with astropy, whatever PATH says
    script = f'eval "$({DESIMIRROR} env --release EDR --data "$1")" && exec {python} -c "$2"'
    reader = (
        "import hashlib, os\n"
        "from astropy.io import fits\n"
        f"paths = ['$DESI_ROOT/{COADD}', '$DESI_SPECTRO_DATA/{RAW}', '$DESI_TARGET/{TARGETS}']\n"
        "for p in paths:\n"
        "    p = os.path.expandvars(p)\n"
        "    with fits.open(p) as h: h.verify('exception')\n"
        "    print(hashlib.sha256(open(p, 'rb').read()).hexdigest())\n"
        "print(fits.getdata(os.path.expandvars('$DESI_ROOT/" + COADD + "'), 'B_FLUX').shape)\n"
    )
    out = subprocess.run(
        ["bash", "-c", script, "bash", str(mp), reader],
        capture_output=True,
        text=True,
        env=access_env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    local = release_bucket.local
    assert out.stdout.split("\n")[:4] == [
        _sha(local / "edr" / COADD),
        _sha(local / "raw_spectro_data" / RAW),
        _sha(local / "target" / TARGETS),
        "(8, 2751)",
    ]

    with pytest.raises(OSError, match="Read-only file system") as err:
        (mp / "edr" / "new.txt").write_text("no")
    assert err.value.errno in (errno.EROFS, errno.EPERM, errno.EACCES)

    record = load_record(tmp_path / "state", mp)
    assert record is not None
    assert _alive(record.pid)
    proc = run_cli("unmount", str(mp), env=access_env)
    assert proc.returncode == 0, proc.stderr
    assert find_mount(mp) is None
    deadline = time.monotonic() + 10
    while _alive(record.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(record.pid)
    assert load_record(tmp_path / "state", mp) is None


@needs_fuse
def test_header_of_300mb_file_fetches_at_most_1mb_and_warm_reads_are_local(
    release_bucket: ReleaseBucket, proxy: CountingProxy, tmp_path: Path
) -> None:
    mounted = mount_bucket(
        f"s3://{release_bucket.bucket}",
        tmp_path / "mnt",
        endpoint_url=proxy.url,
        region="us-east-1",
        no_sign_request=True,
        cache_dir=tmp_path / "cache",
        cache_size=10**9,
        state_dir=tmp_path / "state",
    )
    try:
        big = tmp_path / "mnt" / release_bucket.big_key
        proxy.reset()
        t0 = time.perf_counter()
        header = fits.getheader(big)
        t_header = time.perf_counter() - t0
        time.sleep(0.5)  # let any read-ahead in flight arrive, so that it is counted
        header_bytes = proxy.downstream
        assert header["NAXIS1"] == 4096
        assert header_bytes <= 1 * MB, header_bytes

        proxy.reset()
        t0 = time.perf_counter()
        digest = hashlib.sha256(big.read_bytes()).hexdigest()
        t_cold = time.perf_counter() - t0
        cold_bytes = proxy.downstream
        assert digest == _sha(release_bucket.local / release_bucket.big_key)

        proxy.reset()
        t0 = time.perf_counter()
        size = len(big.read_bytes())
        t_warm = time.perf_counter() - t0
        time.sleep(0.2)
        assert proxy.downstream < 200_000, proxy.downstream  # metadata at most, no data
        assert size / t_warm > 100 * MB, f"warm read at {size / t_warm / MB:.0f} MB/s"
        print(
            f"\nmount: header {header_bytes / MB:.2f} MB from server in {t_header:.3f}s; "
            f"full read cold {cold_bytes / MB:.0f} MB in {t_cold:.2f}s, "
            f"warm {size / t_warm / MB:.0f} MB/s"
        )
    finally:
        stop(mounted, state_dir=tmp_path / "state")
    assert find_mount(tmp_path / "mnt") is None


@needs_fuse
def test_cache_is_brought_back_under_its_bound(public_s3, tmp_path: Path) -> None:
    """rclone enforces the bound by sweeping closed files (here every 2 s, after a grace of
    a few seconds): the cache may hold more for those seconds, never for longer."""
    client = public_s3.client()
    client.create_bucket(Bucket="cachebound")
    file_size = 24 * MB
    for i in range(5):
        client.put_object(Bucket="cachebound", Key=f"edr/f{i}.bin", Body=os.urandom(file_size))
    bound = 50 * MB
    cache = tmp_path / "cache"
    mounted = mount_bucket(
        "s3://cachebound",
        tmp_path / "mnt",
        endpoint_url=public_s3.endpoint_url,
        region="us-east-1",
        no_sign_request=True,
        cache_dir=cache,
        cache_size=bound,
        state_dir=tmp_path / "state",
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _usage(cache))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for i in range(5):
            assert len((tmp_path / "mnt" / f"edr/f{i}.bin").read_bytes()) == file_size
        deadline = time.monotonic() + 20
        while _usage(cache) > bound and time.monotonic() < deadline:
            time.sleep(0.2)
        settled = _usage(cache)
    finally:
        done.set()
        sampler.join()
        stop(mounted, state_dir=tmp_path / "state")
    print(f"\ncache bound {bound / MB:.0f} MB: peak {peak / MB:.0f} MB, then {settled / MB:.0f} MB")
    assert settled <= bound
    assert peak >= 2 * file_size  # it did cache what was read (the bound was tested)


@needs_fuse
def test_signed_mount_keeps_credentials_off_the_command_line(
    s3, bucket: str, tmp_path: Path, access_env: dict[str, str], cleanup_mounts: list[Path]
) -> None:
    client = s3.client()
    path = tmp_path / "t.fits"
    fits.PrimaryHDU().writeto(path)
    client.upload_file(str(path), bucket, "edr/t.fits")
    mp = tmp_path / "signed"
    cleanup_mounts.append(mp)
    env = {**access_env, **s3.env}
    proc = run_cli("mount", f"s3://{bucket}", str(mp), "--endpoint-url", s3.endpoint_url, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (mp / "edr/t.fits").read_bytes() == path.read_bytes()
    record = load_record(tmp_path / "state", mp)
    assert record is not None
    cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes()
    secret = s3.env["AWS_SECRET_ACCESS_KEY"].encode()
    assert secret not in cmdline
    assert secret not in Path(record.log).read_bytes()
    assert not list((tmp_path / "home").rglob("rclone.conf"))  # no config file written
    assert run_cli("unmount", str(mp), env=access_env).returncode == 0


@needs_fuse
def test_mount_local_copy_at_the_same_paths(
    release_bucket: ReleaseBucket,
    access_env: dict[str, str],
    tmp_path: Path,
    cleanup_mounts: list[Path],
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")  # the kernel lists the resolved path
    mp = tmp_path / "link" / "local-mount"
    cleanup_mounts.append(mp)
    proc = run_cli("mount", "--local", str(release_bucket.local), str(mp), env=access_env)
    assert proc.returncode == 0, proc.stderr
    assert _sha(mp / "edr" / COADD) == _sha(release_bucket.local / "edr" / COADD)
    assert "ro" in find_mount(mp).options.split(",")  # type: ignore[union-attr]
    with pytest.raises(OSError, match="Read-only file system"):
        (mp / "new").mkdir()
    assert run_cli("unmount", str(mp), env=access_env).returncode == 0
    assert find_mount(mp) is None


@needs_fuse
def test_unmount_recovers_a_mount_whose_client_died(
    release_bucket: ReleaseBucket,
    access_env: dict[str, str],
    tmp_path: Path,
    cleanup_mounts: list[Path],
) -> None:
    mp = tmp_path / "dead"
    cleanup_mounts.append(mp)
    proc = run_cli("mount", "--local", str(release_bucket.local), str(mp), env=access_env)
    assert proc.returncode == 0, proc.stderr
    record = load_record(tmp_path / "state", mp)
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(record.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert find_mount(mp) is not None  # the kernel still lists the dead mount
    proc = run_cli("unmount", str(mp), env=access_env)
    assert proc.returncode == 0, proc.stderr
    assert find_mount(mp) is None
    # and the mount point is usable again
    again = run_cli("mount", "--local", str(release_bucket.local), str(mp), env=access_env)
    assert again.returncode == 0, again.stderr
    assert run_cli("unmount", str(mp), env=access_env).returncode == 0


@needs_fuse
def test_bad_input_gets_one_clear_line(
    release_bucket: ReleaseBucket,
    access_env: dict[str, str],
    tmp_path: Path,
    cleanup_mounts: list[Path],
) -> None:
    endpoint = release_bucket.s3.endpoint_url
    url = f"s3://{release_bucket.bucket}"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "someone.txt").write_text("x")
    mount = ("mount", "--no-sign-request", "--endpoint-url")
    assert_clean_error(run_cli(*mount, endpoint, url, str(busy), env=access_env), "not empty")
    mp = tmp_path / "mp"
    assert_clean_error(
        run_cli(*mount, endpoint, "s3://no-such-bucket", str(mp), env=access_env),
        "does not exist",
    )
    assert_clean_error(
        run_cli(*mount, "http://127.0.0.1:9", url, str(mp), env=access_env), "cannot reach"
    )
    assert_clean_error(
        run_cli(*mount, endpoint, url + "/nothing-here", str(mp), env=access_env), "nothing under"
    )
    assert_clean_error(run_cli("mount", "not a bucket!", str(mp), env=access_env), "invalid")
    no_fuse = {**access_env, "DESIMIRROR_FUSE_DEVICE": str(tmp_path / "no-fuse")}
    assert_clean_error(
        run_cli(*mount, endpoint, url, str(mp), env=no_fuse),
        "--device /dev/fuse",
        "desimirror.access.data",
    )
    assert_clean_error(run_cli("unmount", str(mp), env=access_env), "is not mounted")
    cleanup_mounts.append(mp)
    assert run_cli(*mount, endpoint, url, str(mp), env=access_env).returncode == 0
    assert_clean_error(
        run_cli(*mount, endpoint, url, str(mp), env=access_env), "already a mount point"
    )
    assert run_cli("unmount", str(mp), env=access_env).returncode == 0


def test_no_permission_on_dev_fuse_names_the_fix(tmp_path: Path) -> None:
    """An unprivileged user who may not open /dev/fuse gets the fix and the alternative."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the command as another user")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is absent")
    if stat.S_IMODE(os.stat("/dev/fuse").st_mode) & 0o006:
        pytest.skip("/dev/fuse is open to every user here: no permission error to provoke")
    nobody = pwd.getpwnam("nobody")
    home = tmp_path / "nobody"
    home.mkdir()
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    tmp_path.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "DESIMIRROR_STATE": str(home)}

    def demote() -> None:
        os.setgid(nobody.pw_gid)
        os.setgroups([])
        os.setuid(nobody.pw_uid)

    try:
        proc = subprocess.run(
            [DESIMIRROR, "mount", "s3://desidata", str(home / "mp")],
            capture_output=True,
            text=True,
            env=env,
            preexec_fn=demote,
            timeout=60,
        )
    except PermissionError:
        pytest.skip("the venv is not readable by user nobody on this machine")
    if "Permission denied" in proc.stderr and "desimirror: error" not in proc.stderr:
        pytest.skip("the venv is not readable by user nobody on this machine")
    assert_clean_error(proc, "no permission to open /dev/fuse", "desimirror.access.data")


def test_client_command_lines_hold_no_secrets(tmp_path: Path) -> None:
    """The remote is defined in the child's environment; argv only has paths and flags."""
    from desimirror.access.mount import mountpoint_s3_argv, rclone_mount_argv, rclone_s3_env

    signed = rclone_s3_env(
        endpoint_url="http://127.0.0.1:1", region="us-east-1", no_sign_request=False
    )
    assert signed["RCLONE_CONFIG_DESIMIRROR_ENV_AUTH"] == "true"  # AWS_* variables, inherited
    assert not any("KEY" in name or "SECRET" in name for name in signed)
    anonymous = rclone_s3_env(endpoint_url=None, region="us-west-2", no_sign_request=True)
    assert anonymous["RCLONE_CONFIG_DESIMIRROR_ENV_AUTH"] == "false"
    assert anonymous["RCLONE_CONFIG_DESIMIRROR_PROVIDER"] == "AWS"
    argv = rclone_mount_argv(
        "desimirror:desidata/edr", tmp_path / "mp", cache_dir=tmp_path / "c",
        cache_size=20 * 10**9, log_file=tmp_path / "log", rclone="rclone",
    )  # fmt: skip
    for flag in ("--read-only", "--vfs-cache-mode", "--vfs-cache-max-size"):
        assert flag in argv
    assert argv[argv.index("--vfs-cache-max-size") + 1] == "20000000000B"
    m = mountpoint_s3_argv(
        "desidata", "edr", tmp_path / "mp", endpoint_url=None, region="us-west-2",
        no_sign_request=True, cache_dir=tmp_path / "c", cache_size=20 * 2**30,
        mount_s3="mount-s3",
    )  # fmt: skip
    assert m[:3] == ["mount-s3", "desidata", str(tmp_path / "mp")]
    for flag in ("--read-only", "--foreground", "--no-sign-request"):
        assert flag in m
    assert m[m.index("--prefix") + 1] == "edr/"
    assert m[m.index("--max-cache-size") + 1] == str(20 * 1024)
