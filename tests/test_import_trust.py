"""A find.json written by the original find.py: the seed's migration path, trusted.

With ``--root`` the import stats every node where the tree is, as a crawl would, so the
tree imported from the seed uploads and verifies; what find.py reached through symlinks is
recorded as those symlinks (a link out of the root is never read); what changed since
find.py ran is a crawl error, not an upload. Without ``--root`` the real files the original
wrote import as before. Hostile files (huge sizes, deep nesting) are refused in one line.

The original ``find.py`` runs here as it is (a peer in ``SHARED/peers``), against the real
SeaweedFS of the session.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import desimirror.pipeline.findjson as treejson
from desimirror.pipeline.findjson import import_tree_json
from desimirror.state.manifest import Manifest
from helpers import DESIMIRROR, SHARED, assert_clean_error, run_cli
from integrity_helpers import rows
from integrity_helpers import upload as upload_cli
from integrity_helpers import verify as verify_cli

FIND_PY = SHARED / "peers" / "desi-aws" / "find.py"
needs_find_py = pytest.mark.skipif(not FIND_PY.is_file(), reason=f"{FIND_PY} is not here")
SHARED_FIND_JSON = sorted((SHARED / "data").glob("*find.json"))
SECRET = b"PRIVATE bytes outside the release, never to be read " * 20


def run_find_py(root: Path, out: Path) -> None:
    """The seed's ``make find.json``: the original crawler, as published, on ``root``."""
    proc = subprocess.run(
        [sys.executable, str(FIND_PY), str(root), "--max-workers", "4", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


def make_tree(tmp_path: Path) -> tuple[Path, dict[str, bytes], Path]:
    """A small release with the symlinks find.py follows: to a file inside, to a private
    file outside (mode 0600), to a directory inside, and a dangling one. Returns the root,
    its regular files (relative path -> bytes) and the outside file."""
    rng = random.Random(13)
    root = tmp_path / "edr"
    files = {
        "spectro/night/frame-b0.fits": rng.randbytes(70_000),
        "spectro/night/frame-r0.fits": rng.randbytes(3_000),
        "spectro/night/deep/er/still.fits": rng.randbytes(500),
        "target/catalog.fits": rng.randbytes(12_345),
        "README": b"the release notes\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "empty").mkdir()
    secret = tmp_path / "private" / "secret.fits"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    (root / "target" / "alias.fits").symlink_to("../spectro/night/frame-b0.fits")
    (root / "leak.fits").symlink_to(secret)
    (root / "spectro" / "latest").symlink_to("night", target_is_directory=True)
    (root / "dangling").symlink_to("nowhere")
    return root, files, secret


def objects(client, bucket: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def node_names(tree: list, prefix: str = "") -> dict[str, int]:
    """path -> type of every node below the root of a loaded find.json."""
    out = {}
    for child in tree[3:]:
        path = f"{prefix}{child[0]}"
        out[path] = child[1]
        out.update(node_names(child, path + "/"))
    return out


# ---------------------------------------------------------------- the seed's workflow


@needs_find_py
@pytest.mark.s3
@pytest.mark.parametrize("backend", ["s5cmd", "native"])
def test_the_seeds_find_json_imports_uploads_and_verifies(
    tmp_path: Path, s3, bucket: str, cli_env: dict, backend: str
) -> None:
    root, files, secret = make_tree(tmp_path)
    find_json, db = tmp_path / "find.json", tmp_path / "m.db"
    run_find_py(root, find_json)
    listed = node_names(json.loads(find_json.read_text()))
    # the original followed every link: the outside file is a file of its listing, and
    # the linked directory's contents are listed a second time
    assert listed["leak.fits"] == 1
    assert listed["spectro/latest/frame-b0.fits"] == 1

    proc = run_cli(
        "crawl", "--from-json", str(find_json), "--root", str(root), "--db", str(db), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["errors"] == 0, report["error_examples"]
    assert report["link_kinds"] == {"broken": 1, "dir": 1, "file": 1, "outside": 1}
    assert report["files"] == len(files) + 1  # the link inside is a copy of its target
    # every uploadable carries the crawl's view of the file, as the uploader checks it
    recorded = rows(
        db,
        "SELECT path, size, mtime_ns, ino FROM entries"
        " WHERE kind = 'file' OR link_kind = 'file' ORDER BY path",
    )
    for path, size, mtime_ns, ino in recorded:
        real = (root / path).stat()
        assert (size, mtime_ns, ino) == (real.st_size, real.st_mtime_ns, real.st_ino), path

    run_cli("plan", "--db", str(db), "--max-batch-size", "40KB", check=True)
    proc, sent = upload_cli(db, bucket, s3.endpoint_url, cli_env, "--backend", backend)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sent["files_sent"] == len(files) + 1, sent
    assert sent["files_changed"] == sent["files_unsafe"] == sent["pending_files"] == 0
    proc, checked = verify_cli(db, bucket, s3.endpoint_url, cli_env, "--checksum")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert checked["matched"] == len(files) + 1, checked

    stored = objects(s3.client(), bucket)
    expected = {f"edr/{rel}": data for rel, data in files.items()}
    expected["edr/target/alias.fits"] = files["spectro/night/frame-b0.fits"]
    assert stored == expected  # byte for byte, and nothing else (no latest/, no leak)
    assert not any(SECRET[:40] in body for body in stored.values())
    assert secret.read_bytes() == SECRET


@needs_find_py
@pytest.mark.s3
def test_what_changed_since_find_py_ran_is_a_crawl_error_and_never_uploaded(
    tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    root, _files, secret = make_tree(tmp_path)
    find_json, db = tmp_path / "find.json", tmp_path / "m.db"
    run_find_py(root, find_json)
    (root / "spectro" / "night" / "frame-r0.fits").unlink()  # gone
    with open(root / "target" / "catalog.fits", "ab") as grown:  # another size
        grown.write(b"appended")
    # a file swapped for a symlink out of the root, with the very size find.json lists
    readme = root / "README"
    secret.write_bytes(SECRET[: readme.stat().st_size])
    readme.unlink()
    readme.symlink_to(secret)
    # a directory replaced by a file, a file by a directory
    deep = root / "spectro" / "night" / "deep"
    (deep / "er" / "still.fits").unlink()
    (deep / "er").rmdir()
    (deep / "er").write_bytes(b"now a file")
    (root / "leak.fits").unlink()
    (root / "leak.fits").mkdir()

    proc = run_cli("crawl", "--from-json", str(find_json), "--root", str(root), "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = dict(rows(db, "SELECT path, error FROM crawl_errors"))
    assert "gone" in errors.pop("spectro/night/frame-r0.fits")
    assert "find.json says 12,345" in errors.pop("target/catalog.fits")
    assert "lists a directory, here it is a regular file" in errors.pop("spectro/night/deep/er")
    assert "lists a file, here it is a directory" in errors.pop("leak.fits")
    assert errors == {}
    assert "CRAWL ERRORS" in proc.stderr
    kinds = dict(rows(db, "SELECT path, coalesce(link_kind, kind) FROM entries"))
    assert kinds["README"] == "outside"
    for path in ("spectro/night/frame-r0.fits", "target/catalog.fits", "leak.fits"):
        assert path not in kinds

    run_cli("plan", "--db", str(db), check=True)
    proc, _ = upload_cli(db, bucket, s3.endpoint_url, cli_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stored = objects(s3.client(), bucket)
    assert set(stored) == {
        "edr/spectro/night/frame-b0.fits",
        "edr/target/alias.fits",
    }
    assert not any(secret.read_bytes() in body for body in stored.values())


def tree_of(path: Path) -> list:
    """The find.json node of a directory without symlinks, in the original's order."""
    children = sorted(path.iterdir(), key=lambda p: (not p.is_dir(), p.name))
    nodes = [tree_of(c) if c.is_dir() else [c.name, 1, c.stat().st_size] for c in children]
    return [path.name, 0, sum(n[2] for n in nodes), *nodes]


def test_directories_deeper_than_the_descriptors_held_are_stat_ed_beneath_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the directory descriptors it holds, the import lets a parent's go and reopens
    it beneath the root when it comes back (files follow subdirectories in find.json):
    every node is still stat'ed, and no descriptor is leaked."""
    monkeypatch.setattr(treejson, "_HELD_FDS", 3)
    root = tmp_path / "rel"
    here = root
    for i in range(8):
        here = here / f"d{i}"
        here.mkdir(parents=True)
        (here / "a").write_bytes(b"x" * i)
        (here / "z").write_bytes(b"y" * i)
    find_json = tmp_path / "find.json"
    find_json.write_text(json.dumps(tree_of(root), separators=(",", ":")))
    before = len(os.listdir("/proc/self/fd"))
    with Manifest.open(tmp_path / "m.db", create=True) as manifest:
        summary = import_tree_json(find_json, manifest, root=str(root))
        assert summary.errors == 0, summary.error_examples
        files = manifest.conn.execute(
            "SELECT path, ino FROM entries WHERE kind = 'file' ORDER BY path"
        ).fetchall()
    assert len(files) == 16
    for path, ino in files:
        assert ino == (root / path).stat().st_ino, path
    assert len(os.listdir("/proc/self/fd")) == before


# ---------------------------------------------------------------- as before, without --root


@pytest.mark.skipif(not SHARED_FIND_JSON, reason="no find.json of the original's is here")
@pytest.mark.parametrize("path", SHARED_FIND_JSON, ids=lambda p: p.name)
def test_the_originals_real_files_import_without_a_root_as_before(
    tmp_path: Path, path: Path
) -> None:
    """Regression guard: no --root, no stat, the same tree (exported byte for byte)."""
    db, out = tmp_path / "m.db", tmp_path / "out.json"
    proc = run_cli("crawl", "--from-json", str(path), "--db", str(db), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == path.read_bytes()
    nodes = node_names(json.loads(path.read_text()))
    assert rows(db, "SELECT count(*) FROM entries") == [(len(nodes) + 1,)]
    assert rows(db, "SELECT count(*) FROM crawl_errors") == [(0,)]
    assert rows(db, "SELECT count(*) FROM entries WHERE mtime_ns IS NOT NULL OR ino IS NOT NULL")[
        0
    ] == (0,)
    assert rows(db, "SELECT value FROM meta WHERE key = 'root'") == []


# ---------------------------------------------------------------- hostile files


def _import(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    source = tmp_path / "find.json"
    source.write_text(text)
    return subprocess.run(
        [DESIMIRROR, "crawl", "--from-json", str(source), "--db", str(tmp_path / "m.db")],
        capture_output=True,
        text=True,
        timeout=120,  # a bound on the test, not a measure: refused early, it takes a second
    )


def _refused(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert_clean_error(proc, *fragments)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, proc.stderr


@pytest.mark.parametrize(
    ("size", "why"),
    [
        (str(2**70), "is too large"),
        (str(2**63), "is too large"),
        ("9" * 5000, "is too large"),
        ("-1", "negative size"),
        ("1.5", "not an integer"),
        ("1e3", "not an integer"),
        ("true", "not an integer"),
        ("false", "not an integer"),
        ("null", "not an integer"),
        ('"7"', "not an integer"),
    ],
)
def test_a_size_that_is_not_a_byte_count_is_one_line_naming_the_path(
    tmp_path: Path, size: str, why: str
) -> None:
    proc = _import(tmp_path, f'["rel",0,1,["a",0,1,["ok",1,1],["f",1,{size}]]]\n')
    _refused(proc, why, "'a/f'", "0 to 2^63-1")
    assert rows(tmp_path / "m.db", "SELECT count(*) FROM entries") == [(0,)]


def test_the_largest_size_imports_and_sums_past_it_are_refused(tmp_path: Path) -> None:
    largest = 2**63 - 1
    proc = _import(tmp_path, f'["rel",0,{largest},["f",1,{largest}]]\n')
    assert proc.returncode == 0, proc.stderr
    assert rows(tmp_path / "m.db", "SELECT size FROM entries WHERE path = 'f'") == [(largest,)]
    half = 2**62
    proc = _import(tmp_path, f'["rel",0,0,["f",1,{half}],["g",1,{half}]]\n')
    _refused(proc, "add up to more than 2^63-1")


def test_a_bad_root_size_and_a_bad_type_name_their_node(tmp_path: Path) -> None:
    _refused(_import(tmp_path, f'["rel",0,{2**70}]\n'), "the root node")
    _refused(_import(tmp_path, '["rel",0,1,["f",true,1]]\n'), "unknown node type true for 'f'")


def test_nesting_deeper_than_path_max_allows_is_refused_early(tmp_path: Path) -> None:
    """60,000 levels in 600 KB: refused at level 2,049, before any path grows long (every
    row holds its whole path, so reading on would take time and memory quadratic in it)."""
    levels = 60_000
    text = '["rel",0,0' + ',["d",0,0' * levels + "]" * (levels + 1) + "\n"
    _refused(_import(tmp_path, text), "deeper than 2,048 levels", "PATH_MAX")
    assert rows(tmp_path / "m.db", "SELECT count(*) FROM entries") == [(0,)]
    # as deep as PATH_MAX allows is a tree
    allowed = treejson.MAX_DEPTH
    text = '["rel",0,1' + ',["d",0,1' * (allowed - 1) + ',["f",1,1]' + "]" * allowed + "\n"
    proc = _import(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    deepest = "/".join(["d"] * (allowed - 1) + ["f"])
    assert rows(tmp_path / "m.db", "SELECT size FROM entries WHERE path = ?", (deepest,)) == [(1,)]


@pytest.mark.parametrize(("levels", "name"), [(1, "n" * 5000), (2000, "n" * 250)])
def test_paths_longer_than_path_max_allows_are_refused(
    tmp_path: Path, levels: int, name: str
) -> None:
    """Within the depth bound, long names would still make rows quadratic in the depth."""
    text = '["rel",0,0' + f',["{name}",0,0' * levels + "]" * (levels + 1) + "\n"
    _refused(_import(tmp_path, text), "a path of more than 4,351 characters", "PATH_MAX")
    assert rows(tmp_path / "m.db", "SELECT count(*) FROM entries") == [(0,)]
