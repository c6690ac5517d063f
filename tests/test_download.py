"""``desimirror download`` against the real SeaweedFS: a local copy of a mirrored release.

The release is mirrored as a data manager would (crawl, plan, upload with the bucket's
remaps, manifest publish); the download then runs as the installed command, some runs
through the fault-injecting proxy, which counts every GET per key. What is checked is
what a user relies on: the copy is the release byte for byte, laid out as the bucket; a
killed download resumes without fetching again what it completed; bytes that differ from
the published manifest never reach their final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from desimirror.pipeline.download import RANGE_SIZE, RANGED_ABOVE
from desimirror.storage.keys import KeyMap
from faultproxy import FaultProxy
from helpers import DESIMIRROR, assert_clean_error, kill_once, run_cli
from integrity_helpers import make_release, random_files

pytestmark = pytest.mark.s3
REMAP = ("edr/spectro/data=raw_spectro_data", "edr/target=target")
KEYMAP = KeyMap.build("edr", REMAP)
PART = ".desimirror-part"


def _release_files() -> dict[str, bytes]:
    files = {f"spectro/redux/fuji/{k}": v for k, v in random_files(21, 160, dirs=4).items()}
    files.update({f"spectro/data/20201214/{k}": v for k, v in random_files(22, 30).items()})
    files.update({f"target/catalogs/{k}": v for k, v in random_files(23, 20).items()})
    return files


def _mirror(root: Path, db: Path, bucket: str, s3, env: dict, *plan: str) -> None:
    """Crawl, plan, upload (with the bucket's remaps) and publish ``root``'s manifest."""
    target = ["--db", str(db), "--bucket", f"s3://{bucket}", "--endpoint-url", s3.endpoint_url]
    run_cli("crawl", str(root), "--db", str(db), check=True)
    run_cli("plan", "--db", str(db), *plan, check=True)
    remaps = [arg for rule in REMAP for arg in ("--remap", rule)]
    run_cli("upload", *target, *remaps, "--backend", "native", env=env, check=True)
    run_cli("manifest", "publish", *target, env=env, check=True)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory: pytest.TempPathFactory, s3) -> tuple[str, Path]:
    """(bucket, release root): a release mirrored with the bucket's remaps and its
    manifest published, shared by the tests that do not change the bucket."""
    work = tmp_path_factory.mktemp("dl")
    bucket = f"t-download-shared-{os.getpid() % 10000}"
    root = work / "edr"
    make_release(root, _release_files())
    (root / "spectro/redux/fuji/empty").mkdir()
    db = work / "m.db"
    s3.client().create_bucket(Bucket=bucket)
    _mirror(root, db, bucket, s3, {**os.environ, **s3.env}, "--max-batch-size", "1MB")
    return bucket, root


def _download(source: str, dest: Path, endpoint: str, env: dict, *args: str):
    proc = run_cli(
        "download", source, str(dest), "--endpoint-url", endpoint, "--json", *args, env=env
    )
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = None
    return proc, report


def _assert_copy_is_release(dest: Path, root: Path, paths: list[str]) -> None:
    for rel in paths:
        assert (dest / KEYMAP.key(rel)).read_bytes() == (root / rel).read_bytes(), rel


def _release_paths(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _data_gets(proxy: FaultProxy) -> Counter[str]:
    """GETs of objects (the release's files), not of the manifest nor of listings."""
    return Counter(
        a.key
        for a in proxy.arrivals
        if a.method == "GET" and a.key and "/.desimirror/" not in a.key and "?" not in a.key
    )


def test_download_is_the_release_byte_for_byte_in_the_bucket_layout(
    tmp_path: Path, s3, mirrored, cli_env: dict
) -> None:
    bucket, root = mirrored
    dest = tmp_path / "desidata"
    proc, report = _download(f"s3://{bucket}/edr", dest, s3.endpoint_url, cli_env)
    assert proc.returncode == 0, proc.stderr
    paths = _release_paths(root)
    assert report["reference"] == "manifest"
    assert report["files_fetched"] == len(paths)
    assert report["proofs"] == {"sha256": len(paths)}
    _assert_copy_is_release(dest, root, paths)
    assert (dest / "raw_spectro_data/20201214").is_dir()
    assert (dest / "target/catalogs").is_dir()
    assert (dest / "edr/spectro/redux/fuji/empty").is_dir()  # S3 cannot hold it; the manifest can
    assert (dest / "edr/.desimirror/manifest.tsv.gz").is_file()
    assert not list(dest.rglob(f"*{PART}"))
    env = run_cli("env", "--release", "edr", "--data", str(dest), check=True).stdout
    assert f"DESI_SPECTRO_DATA={dest}/raw_spectro_data" in env
    assert "warning" not in env
    again, report = _download(f"s3://{bucket}/edr", dest, s3.endpoint_url, cli_env)
    assert again.returncode == 0, again.stderr
    assert (report["files_fetched"], report["files_kept"]) == (0, len(paths))


def test_a_download_through_errors_and_cut_bodies_ends_with_every_file_proven(
    tmp_path: Path, s3, mirrored, cli_env: dict
) -> None:
    """500s, SlowDowns and bodies cut short on the GETs of the files: retried until each
    file is whole and proven; nothing short or unproven ever takes a final name."""
    bucket, root = mirrored
    dest = tmp_path / "copy"
    rates = {"error500": 0.1, "slowdown": 0.1, "truncate": 0.15}
    with FaultProxy(s3.endpoint_url, rates=rates, methods={"GET"}) as proxy:
        proc, report = _download(f"s3://{bucket}/edr", dest, proxy.endpoint_url, cli_env)
        faults = dict(proxy.faults)
    assert faults.get("truncate"), f"no body was cut short: {faults}"
    assert faults.get("error500"), f"no 500 was answered: {faults}"
    assert proc.returncode == 0, proc.stderr
    paths = _release_paths(root)
    assert report["files_fetched"] == len(paths)
    assert report["proofs"] == {"sha256": len(paths)}
    _assert_copy_is_release(dest, root, paths)
    assert not list(dest.rglob(f"*{PART}"))


def test_killed_download_resumes_without_fetching_completed_files(
    tmp_path: Path, s3, mirrored, cli_env: dict
) -> None:
    bucket, root = mirrored
    dest = tmp_path / "copy"
    record = dest / ".desimirror-download" / "done.tsv"
    with FaultProxy(s3.endpoint_url, rates={"stall": 1.0}, methods={"GET"}) as proxy:
        proxy.stall_seconds = 0.02  # every GET a little slow: room to kill mid-way
        argv = [DESIMIRROR, "download", f"s3://{bucket}/edr", str(dest)]
        argv += ["--endpoint-url", proxy.endpoint_url, "--workers", "4", "--json"]
        victim = subprocess.Popen(
            argv, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        kill_once(
            victim,
            lambda: record.is_file() and record.read_text().count("\n") >= 40,
            60,
            "the download ended before it could be killed",
        )
        completed = {line.split("\t")[0] for line in record.read_text().splitlines()}
        paths = _release_paths(root)
        assert 40 <= len(completed) < len(paths)
        assert all((dest / key).is_file() for key in completed)
        proxy.reset_counts()
        proxy.rates = {}
        resumed, report = _download(f"s3://{bucket}/edr", dest, proxy.endpoint_url, cli_env)
        gets = _data_gets(proxy)
    assert resumed.returncode == 0, resumed.stderr
    assert not set(gets) & completed, "a file completed before the kill was fetched again"
    assert report["files_kept"] >= len(completed)
    assert report["files_fetched"] + report["files_kept"] == len(paths)
    assert sum(gets.values()) == report["files_fetched"]
    _assert_copy_is_release(dest, root, paths)
    assert not list(dest.rglob(f"*{PART}"))


def test_a_download_killed_while_a_large_file_is_in_ranges_resumes_to_the_same_bytes(
    tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    """``kill -9`` while one large file streams in parallel ranges into its part file:
    nothing partial carries its final name, and the same command run again completes the
    copy, byte for byte, every file proven, no part file left behind."""
    root = tmp_path / "edr"
    big_rel = "spectro/redux/fuji/tiles/coadd-big.fits"
    big = os.urandom(5 * RANGE_SIZE + 12_345)  # six ranges: more than are in flight at once
    assert len(big) > RANGED_ABOVE
    files = {f"spectro/redux/fuji/{k}": v for k, v in random_files(51, 6, dirs=2).items()}
    files[big_rel] = big
    make_release(root, files)
    db = tmp_path / "m.db"
    _mirror(root, db, bucket, s3, cli_env)
    dest = tmp_path / "copy"
    final = dest / KEYMAP.key(big_rel)
    part = final.with_name(f".{final.name}{PART}")
    probe = big[: 1 << 20]  # the part file is reserved whole at once: its bytes show progress
    seen: list[int] = []

    def large_file_in_flight() -> bool:
        if final.exists() or not part.is_file():
            return False
        with open(part, "rb") as stream:
            if stream.read(len(probe)) != probe:
                return False
        seen.append(part.stat().st_size)
        return True

    # every GET held a moment: range 0 lands, the ranges after the window wait
    with FaultProxy(s3.endpoint_url, rates={"stall": 1.0}, methods={"GET"}) as proxy:
        proxy.stall_seconds = 0.5
        argv = [DESIMIRROR, "download", f"s3://{bucket}/edr", str(dest)]
        argv += ["--endpoint-url", proxy.endpoint_url, "--json"]
        log = tmp_path / "killed.stderr"
        with open(log, "wb") as err:
            victim = subprocess.Popen(argv, env=cli_env, stdout=subprocess.DEVNULL, stderr=err)
            try:
                kill_once(
                    victim,
                    large_file_in_flight,
                    30,
                    "the download ended before it could be killed with the large file in "
                    "flight: the test proved nothing",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{log.read_text(errors='replace')}") from None
        assert seen, (
            "no part file holding the large file's first bytes was seen in 30 s: the kill "
            f"was not made while it was in flight\n{log.read_text(errors='replace')}"
        )
        assert victim.returncode == -signal.SIGKILL
        assert not final.exists() or final.read_bytes() == big, "a partial file at its final name"
        assert part.is_file(), "SIGKILL cleans nothing up: the part file must still be there"
        record = dest / ".desimirror-download" / "done.tsv"
        done = record.read_text().splitlines() if record.is_file() else []
        assert not any(line.split("\t")[0] == final.relative_to(dest).as_posix() for line in done)
        proxy.reset_counts()
        proxy.rates = {}
        resumed, report = _download(f"s3://{bucket}/edr", dest, proxy.endpoint_url, cli_env)
        gets = _data_gets(proxy)
    assert resumed.returncode == 0, resumed.stderr
    paths = _release_paths(root)
    assert gets[KEYMAP.key(big_rel)] >= -(-len(big) // RANGE_SIZE)  # again, from its start
    assert report["files_failed"] == 0
    assert not report["failures"]
    assert report["files"] == len(paths)
    assert report["files_fetched"] + report["files_kept"] == len(paths)
    assert report["files_fetched"] >= 1
    assert report["proofs"] == {"sha256": report["files_fetched"]}
    _assert_copy_is_release(dest, root, paths)
    assert not list(dest.rglob(f"*{PART}"))


def test_bytes_that_differ_from_the_published_manifest_are_refused(
    tmp_path: Path, s3, mirrored, cli_env: dict
) -> None:
    bucket, root = mirrored
    victim = "spectro/redux/fuji/d1/sub1/f0005.fits"
    key = KEYMAP.key(victim)
    good = (root / victim).read_bytes()
    bad = bytes([good[0] ^ 0xFF]) + good[1:]  # same size: only the content proof sees it
    client = s3.client()
    client.put_object(Bucket=bucket, Key=key, Body=bad)
    dest = tmp_path / "copy"
    try:
        proc, report = _download(f"s3://{bucket}/edr", dest, s3.endpoint_url, cli_env)
    finally:
        client.put_object(Bucket=bucket, Key=key, Body=good)  # the shared mirror, as it was
    assert proc.returncode == 5, proc.stderr
    assert_clean_error(proc, key, hashlib.sha256(good).hexdigest())
    assert report["files_failed"] == 1
    assert report["failures"][0]["key"] == key
    assert not (dest / key).exists()
    assert not list(dest.rglob(f"*{PART}"))
    others = [p for p in _release_paths(root) if p != victim]
    _assert_copy_is_release(dest, root, others)


def test_dry_run_fetches_and_writes_nothing(tmp_path: Path, s3, mirrored, cli_env: dict) -> None:
    bucket, root = mirrored
    dest = tmp_path / "copy"
    with FaultProxy(s3.endpoint_url) as proxy:
        proc, report = _download(
            f"s3://{bucket}/edr", dest, proxy.endpoint_url, cli_env, "--dry-run"
        )
        gets = _data_gets(proxy)
    assert proc.returncode == 0, proc.stderr
    assert report["files_to_fetch"] == len(_release_paths(root))
    assert report["files_fetched"] == 0
    assert not gets
    assert not dest.exists()


def test_include_and_subdir_select_files(tmp_path: Path, s3, mirrored, cli_env: dict) -> None:
    bucket, root = mirrored
    dest = tmp_path / "copy"
    proc, report = _download(
        f"s3://{bucket}/edr/spectro/redux/fuji",
        dest,
        s3.endpoint_url,
        cli_env,
        "--include",
        "d2/*",
    )
    assert proc.returncode == 0, proc.stderr
    wanted = [p for p in _release_paths(root) if p.startswith("spectro/redux/fuji/d2/")]
    assert report["files_fetched"] == len(wanted)
    _assert_copy_is_release(dest, root, wanted)
    got = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    got = {p for p in got if not p.startswith((".desimirror-download/", "edr/.desimirror/"))}
    assert got == {KEYMAP.key(p) for p in wanted}


def test_without_a_manifest_the_releases_sha256sum_listings_prove_the_files(
    tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    root = tmp_path / "edr"
    files = random_files(31, 12, dirs=2)
    files["d0/big.fits"] = os.urandom(17 << 20)  # fetched in ranges, proven as one
    files["d0/big-bad.fits"] = os.urandom(17 << 20)  # in ranges too, and damaged in the bucket
    make_release(root, files)
    (root / "unlisted").mkdir()
    (root / "unlisted/multipart.fits").write_bytes(os.urandom(12 << 20))
    client = s3.client()
    for rel in _release_paths(root):
        client.put_object(Bucket=bucket, Key=f"edr/{rel}", Body=(root / rel).read_bytes())
    parts = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    client.upload_file(  # no listing for it: its multipart ETag is all there is
        str(root / "unlisted/multipart.fits"), bucket, "edr/unlisted/multipart.fits", Config=parts
    )
    victim = "d1/sub1/f0007.fits"
    good = (root / victim).read_bytes()
    client.put_object(Bucket=bucket, Key=f"edr/{victim}", Body=good[::-1])
    big = bytearray((root / "d0/big-bad.fits").read_bytes())
    big[len(big) // 2] ^= 0xFF  # one byte, in a middle range
    client.put_object(Bucket=bucket, Key="edr/d0/big-bad.fits", Body=bytes(big))
    dest = tmp_path / "copy"
    proc, report = _download(f"s3://{bucket}/edr", dest, s3.endpoint_url, cli_env)
    assert proc.returncode == 5, proc.stderr  # the object's own ETag matches; the listing not
    assert report["reference"] == "listing"
    refused = {f"edr/{victim}", "edr/d0/big-bad.fits"}
    assert {f["key"] for f in report["failures"]} == refused, report["failures"]
    assert not any((dest / key).exists() for key in refused)
    assert not list(dest.rglob(f"*{PART}"))
    wanted = [p for p in _release_paths(root) if p not in (victim, "d0/big-bad.fits")]
    for rel in wanted:
        assert (dest / "edr" / rel).read_bytes() == (root / rel).read_bytes()
    listed = [p for p in wanted if not p.endswith(".sha256sum") and "unlisted" not in p]
    assert report["proofs"]["sha256"] == len(listed)  # the listings: their own checksum or ETag
    assert report["proofs"]["multipart-etag"] == 1


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["s3://abc", "DIR"], "give the release"),
        (["s3://B/nothing-here", "DIR"], "nothing to download"),
        (["s3://B/edr", "DIR", "--include", ""], "--include needs a pattern"),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path, s3, mirrored, cli_env: dict, args: list[str], fragment: str
) -> None:
    bucket, _ = mirrored
    argv = [
        a.replace("s3://B/", f"s3://{bucket}/").replace("DIR", str(tmp_path / "d")) for a in args
    ]
    proc = run_cli("download", *argv, "--endpoint-url", s3.endpoint_url, env=cli_env)
    assert proc.returncode == 2
    assert_clean_error(proc, fragment)


def test_the_releases_symlinks_are_recreated_where_what_they_point_at_is_downloaded(
    tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    root = tmp_path / "edr"
    make_release(root, random_files(41, 6, dirs=2))
    exposure = root / "spectro/data/20201214/desi-1.fits.fz"
    exposure.parent.mkdir(parents=True)
    exposure.write_bytes(os.urandom(5000))
    links = {  # path -> target, as `readlink` shows them
        "d0/latest.fits": "sub0/f0000.fits",  # a file beside
        "d1/raw.fits.fz": "../spectro/data/20201214/desi-1.fits.fz",  # into a remapped area
        "d1/chain.fits": "raw.fits.fz",  # a link to a link
        "d1/same": "../d0",  # a directory
    }
    for path, target in {**links, "d0/gone": "nothing", "d0/etc": "/etc"}.items():
        (root / path).symlink_to(target)
    db = tmp_path / "m.db"
    _mirror(root, db, bucket, s3, {**os.environ, **s3.env})
    dest = tmp_path / "copy"
    proc, report = _download(f"s3://{bucket}/edr", dest, s3.endpoint_url, cli_env)
    assert proc.returncode == 0, proc.stderr
    assert (report["links"], report["links_created"], report["links_not_recreated"]) == (4, 4, 2)
    assert os.readlink(dest / "edr/d0/latest.fits") == "sub0/f0000.fits"
    # the bucket's layout moved the exposure: the link follows it
    assert (
        os.readlink(dest / "edr/d1/raw.fits.fz") == "../../raw_spectro_data/20201214/desi-1.fits.fz"
    )
    assert os.readlink(dest / "edr/d1/chain.fits") == "raw.fits.fz"
    for path in links:
        assert (dest / "edr" / path).exists(), path
    assert (dest / "edr/d1/chain.fits").read_bytes() == exposure.read_bytes()
    assert (dest / "edr/d1/same/sub0/f0000.fits").read_bytes() == (
        root / "d0/sub0/f0000.fits"
    ).read_bytes()
    assert not os.path.lexists(dest / "edr/d0/gone")
    assert not os.path.lexists(dest / "edr/d0/etc")
    again, report = _download(f"s3://{bucket}/edr", dest, s3.endpoint_url, cli_env)
    assert again.returncode == 0, again.stderr
    assert (report["links"], report["links_created"], report["files_fetched"]) == (4, 0, 0)
    # a link whose target is not downloaded is the file itself, as the bucket holds it
    only = tmp_path / "only"
    proc, report = _download(
        f"s3://{bucket}/edr", only, s3.endpoint_url, cli_env, "--include", "d1/*"
    )
    assert proc.returncode == 0, proc.stderr
    assert not (only / "edr/d1/raw.fits.fz").is_symlink()
    assert (only / "edr/d1/raw.fits.fz").read_bytes() == exposure.read_bytes()
    assert os.readlink(only / "edr/d1/chain.fits") == "raw.fits.fz"
    assert not os.path.lexists(only / "edr/d1/same")  # its directory is not downloaded


def test_a_manifest_naming_files_beneath_a_link_of_its_own_has_them_refused(
    tmp_path: Path,
) -> None:
    """A crawl never descends a link, so a manifest with a file beneath one is not a
    release's: the file is refused rather than written through the link it makes."""
    import gzip

    from desimirror.pipeline.download import _plan_from_manifest

    lines = [
        "#desimirror-manifest\t1",
        "#prefix\tedr",
        "l\tout\t\t1\t\t\t\t/etc\toutside",
        "l\tsame\t\t1\t\t\t\tx\tdir",
        "f\tsame/evil\t3\t1\t" + "a" * 64 + "\tc\t\t\t",
        "d\tx\t\t1\t\t\t\t\t",
        "f\tx/f\t3\t1\t" + "b" * 64 + "\tc\t\t\t",
    ]
    path = tmp_path / "manifest.tsv.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    (tmp_path / "manifest.json").write_text("{}")
    plan = _plan_from_manifest(path, "", ())
    assert [w.key for w in plan.wanted] == ["edr/x/f"]
    assert [(link.key, link.target) for link in plan.links] == [("edr/same", "x")]
    assert plan.refused == ["edr/same/evil"]
    assert plan.links_skipped == 1
