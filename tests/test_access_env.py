"""``desimirror env``: the data model variables, and the NERSC paths, over a real tree.

No server is needed: these run the installed command on local directories laid out like
the mirror (and like NERSC), then read files back through the printed paths and links.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from desimirror.access.config import load_config
from desimirror.access.env import data_model_env, detect_layout, normalize_release
from desimirror.errors import UsageError
from helpers import DESIMIRROR, assert_clean_error, run_cli


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DESIMIRROR_", "DESI_"))}
    env["HOME"] = str(tmp_path)
    return env


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """A local copy in the mirror's layout: shared raw data and targets beside the release."""
    top = tmp_path / "data with space"
    files = {
        "edr/spectro/redux/fuji/tiles-fuji.fits": b"tiles",
        "edr/spectro/desi_spectro_calib/x.txt": b"calib",
        "edr/survey/ops/surveyops/mtl.txt": b"ops",
        "edr/vac/edr/lss/v1/cat.fits": b"vac",
        "dr1/spectro/redux/iron/tiles-iron.fits": b"iron",
        "raw_spectro_data/20200201/00045677/gfa-00045677.fits.fz": b"raw",
        "target/catalogs/dr9/targets.fits": b"targets",
    }
    for rel, data in files.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(data)
    return top


def test_env_prints_data_model_exports_that_bash_can_eval(mirror: Path, tmp_path: Path) -> None:
    proc = run_cli("env", "--release", "EDR", "--data", str(mirror), env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert all(line.startswith("export ") for line in proc.stdout.splitlines())
    script = (
        f'eval "$({DESIMIRROR} env --release Edr --data "$1")"; '
        'cat "$DESI_SPECTRO_REDUX/$SPECPROD/tiles-fuji.fits"; echo; '
        'cat "$DESI_SPECTRO_DATA/20200201/00045677/gfa-00045677.fits.fz"; echo; '
        'cat "$DESI_TARGET/catalogs/dr9/targets.fits"; echo; '
        'cat "$DESI_SPECTRO_CALIB/x.txt"; echo; cat "$DESI_SURVEYOPS/mtl.txt"; echo; '
        'echo "$DESI_ROOT|$DESI_RELEASE"'
    )
    out = subprocess.run(
        ["bash", "-c", script, "bash", str(mirror)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        check=True,
    ).stdout.splitlines()
    assert out == ["tiles", "raw", "targets", "calib", "ops", f"{mirror}/edr|edr"]


def test_env_defaults_follow_desi_release_and_desimirror_data(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "DESI_RELEASE": "DR1", "DESIMIRROR_DATA": "/srv/desi"}
    proc = run_cli("env", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "export DESI_ROOT=/srv/desi/dr1" in proc.stdout
    assert "export SPECPROD=iron" in proc.stdout
    assert "export DESI_SPECTRO_DATA=/srv/desi/raw_spectro_data" in proc.stdout


def test_unknown_release_is_one_clear_line(tmp_path: Path) -> None:
    proc = run_cli("env", "--release", "dr99", "--data", str(tmp_path), env=_env(tmp_path))
    assert_clean_error(proc, "unknown release 'dr99'", "edr, dr1, dr2")


def test_a_release_directory_present_in_the_data_is_accepted(mirror: Path) -> None:
    (mirror / "dr3").mkdir()
    assert normalize_release("DR3", mirror) == "dr3"
    with pytest.raises(UsageError):
        normalize_release("target", mirror)  # a shared directory is not a release
    with pytest.raises(UsageError):
        normalize_release("../etc", mirror)


def test_a_local_copy_in_nersc_layout_is_detected(tmp_path: Path) -> None:
    (tmp_path / "edr/spectro/data/20200201").mkdir(parents=True)
    (tmp_path / "edr/target").mkdir(parents=True)
    assert detect_layout(tmp_path, "edr") == "nersc"
    env = data_model_env("edr", tmp_path, "nersc")
    assert env["DESI_SPECTRO_DATA"] == f"{tmp_path}/edr/spectro/data"
    assert env["DESI_TARGET"] == f"{tmp_path}/edr/target"
    proc = run_cli("env", "--data", str(tmp_path), env=_env(tmp_path))
    assert f"export DESI_SPECTRO_DATA={tmp_path}/edr/spectro/data" in proc.stdout


def test_nersc_links_make_hard_coded_paths_resolve(mirror: Path, tmp_path: Path) -> None:
    nersc = tmp_path / "global/cfs/cdirs/desi"
    args = ("env", "--release", "edr", "--data", str(mirror), "--nersc-links")
    proc = run_cli(*args, "--nersc-root", str(nersc), env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    public = nersc / "public"
    expect = {
        public / "edr/spectro/redux/fuji/tiles-fuji.fits": b"tiles",
        public / "edr/spectro/data/20200201/00045677/gfa-00045677.fits.fz": b"raw",
        public / "edr/target/catalogs/dr9/targets.fits": b"targets",
        public / "edr/vac/edr/lss/v1/cat.fits": b"vac",
        public / "dr1/spectro/redux/iron/tiles-iron.fits": b"iron",
        public / "dr1/spectro/data/20200201/00045677/gfa-00045677.fits.fz": b"raw",
        nersc / "spectro/redux/fuji/tiles-fuji.fits": b"tiles",
        nersc / "target/catalogs/dr9/targets.fits": b"targets",
    }
    for path, data in expect.items():
        assert path.read_bytes() == data, path
    # Running it again changes nothing; switching release re-points the release links.
    again = run_cli(*args, "--nersc-root", str(nersc), env=_env(tmp_path))
    assert "# 0 NERSC path links made" in again.stderr
    dr1 = run_cli(
        "env", "--release", "dr1", "--data", str(mirror), "--nersc-links", "--nersc-root",
        str(nersc), env=_env(tmp_path),
    )  # fmt: skip
    assert dr1.returncode == 0, dr1.stderr
    assert (nersc / "spectro/redux/iron/tiles-iron.fits").read_bytes() == b"iron"


def test_nersc_links_never_replace_real_files(mirror: Path, tmp_path: Path) -> None:
    nersc = tmp_path / "nersc"
    (nersc / "public/edr").mkdir(parents=True)
    (nersc / "public/edr/vac").write_text("someone's file")
    proc = run_cli(
        "env", "--data", str(mirror), "--nersc-links", "--nersc-root", str(nersc),
        env=_env(tmp_path),
    )  # fmt: skip
    assert_clean_error(proc, "exists and is not a link")
    assert (nersc / "public/edr/vac").read_text() == "someone's file"


def test_config_is_read_from_an_injected_environment(tmp_path: Path) -> None:
    cfg = load_config({"HOME": str(tmp_path)})
    assert cfg.bucket == "s3://desidata"
    assert cfg.no_sign_request
    assert cfg.data_dir == tmp_path / "desidata"
    assert cfg.cache_dir == tmp_path / ".cache/desimirror"
    own = load_config(
        {
            "HOME": str(tmp_path),
            "DESIMIRROR_BUCKET": "s3://mine/prefix",
            "DESIMIRROR_CACHE_SIZE": "1GiB",
            "DESIMIRROR_RELEASE": "DR1",
            "DESI_RELEASE": "edr",
        }
    )
    assert not own.no_sign_request  # another bucket: signed unless told
    assert own.cache_size == 2**30
    assert own.release == "DR1"
    with pytest.raises(UsageError):
        load_config({"DESIMIRROR_NO_SIGN_REQUEST": "maybe"})
