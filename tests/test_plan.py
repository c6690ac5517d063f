"""The batch planner: every file in exactly one batch, within the limits, few batches.

Trees are written straight into a manifest with ``put_entries`` (no filesystem), so random
trees with empty directories, zero-byte files, symlinks and odd names are cheap to try.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from desimirror.errors import UsageError
from desimirror.pipeline.plan import (
    Batch,
    Limits,
    Node,
    Selection,
    original_batch_count,
    plan_manifest,
    plan_tree,
    resolve_subdir,
    store_plan,
    write_batch_json,
)
from desimirror.state.manifest import Entry, Manifest
from helpers import assert_clean_error, run_cli

ROOT = "/data/public/edr"

# A tree is {name: subtree | leaf}; a leaf is a file size, ("link", size) for a symlink to a
# file inside the root (uploaded), or "linkdir" / "other" (never uploaded).
Tree = dict


def entries_of(tree: Tree, prefix: str = "") -> Iterator[Entry]:
    for name, value in tree.items():
        path = f"{prefix}/{name}" if prefix else name
        if isinstance(value, dict):
            yield Entry(path, "dir", 0)
            yield from entries_of(value, path)
        elif isinstance(value, tuple):
            yield Entry(path, "link", value[1], 1, "target", "file")
        elif value == "linkdir":
            yield Entry(path, "link", 0, 1, "somewhere", "dir")
        elif value == "other":
            yield Entry(path, "other", 0, 1)
        else:
            yield Entry(path, "file", value, 1)


def make_manifest(db: str | Path, tree: Tree) -> Manifest:
    manifest = Manifest.open(db, create=True)
    manifest.bind_root(ROOT, "edr")
    crawl = manifest.begin_crawl(ROOT)
    with manifest.atomic():
        manifest.put_entries(crawl, [Entry("", "dir", 0), *entries_of(tree)])
    manifest.close_crawl(crawl)
    return manifest


def uploadables(manifest: Manifest, under: str = "") -> dict[str, int]:
    return {e.path: e.size for e in manifest.iter_uploadables(under)}


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def check_plan(manifest: Manifest, subdir: str, limits: Limits, batches: list[Batch]) -> None:
    """The invariants every plan keeps, checked against the manifest itself."""
    expected = uploadables(manifest, subdir)
    seen: list[str] = []
    for batch in batches:
        covered = [e for e in manifest.batch_entries(list(batch.paths))]
        assert covered, f"batch without files: {batch}"
        assert batch.files == len(covered)
        assert batch.bytes == sum(e.size for e in covered)
        if len(covered) > 1:
            assert limits.fits(batch.bytes, batch.files), batch
        assert len({parent(p) for p, _d in batch.paths}) == 1, f"not siblings: {batch}"
        seen.extend(e.path for e in covered)
    assert len(seen) == len(set(seen)), "a file is in two batches"
    assert set(seen) == set(expected)


# -- random trees ----------------------------------------------------------------------------

names = st.text(alphabet='ab-.0Zé"\\', min_size=1, max_size=3).filter(
    lambda s: s not in (".", "..")
)
leaves = st.one_of(
    st.integers(0, 60),
    st.integers(0, 60),
    st.just(0),
    st.tuples(st.just("link"), st.integers(0, 30)),
    st.sampled_from(["linkdir", "other"]),
)
trees = st.recursive(
    leaves, lambda inner: st.dictionaries(names, inner, max_size=6), max_leaves=40
).filter(lambda t: isinstance(t, dict))


def all_dirs(tree: Tree, prefix: str = "") -> Iterator[str]:
    for name, value in tree.items():
        if isinstance(value, dict):
            path = f"{prefix}/{name}" if prefix else name
            yield path
            yield from all_dirs(value, path)


def batch_py(tree: Tree | int | tuple | str, max_bytes: int) -> int:
    """The original batch.py's rule, written directly on the nested tree as a reference."""
    if isinstance(tree, dict):
        size = tree_size(tree)
        if size <= max_bytes:
            return 1
        return sum(batch_py(v, max_bytes) for v in tree.values())
    return 1 if isinstance(tree, (int, tuple)) else 0


def tree_size(tree: Tree | int | tuple | str) -> int:
    if isinstance(tree, dict):
        return sum(tree_size(v) for v in tree.values())
    if isinstance(tree, tuple):
        return tree[1]
    return tree if isinstance(tree, int) else 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=trees,
    max_bytes=st.integers(0, 150),
    min_frac=st.floats(0, 1),
    max_files=st.none() | st.integers(1, 8),
    pick=st.integers(0, 1000),
)
def test_random_trees_keep_every_invariant(
    tree: Tree, max_bytes: int, min_frac: float, max_files: int | None, pick: int
) -> None:
    limits = Limits(max_bytes, int(max_bytes * min_frac), max_files)
    with make_manifest(":memory:", tree) as manifest:
        dirs = ["", *all_dirs(tree)]
        subdir = dirs[pick % len(dirs)]
        batches = plan_manifest(manifest, subdir, limits)
        check_plan(manifest, subdir, limits, batches)
        assert plan_manifest(manifest, subdir, limits) == batches  # deterministic

        original = original_batch_count(manifest, subdir, max_bytes)
        sub = tree
        for part in filter(None, subdir.split("/")):
            sub = sub[part]
        assert original == batch_py(sub, max_bytes) if subdir else batch_py(tree, max_bytes)
        if max_files is None:
            assert len(batches) <= original

        store_plan(manifest, subdir, limits, batches)
        stored = [(b, f, sorted(p)) for _i, b, f, p in manifest.iter_batches()]
        assert stored == [(b.bytes, b.files, sorted(b.paths)) for b in batches]
        assert manifest.get_meta("plan_subdir") == subdir

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "batch.json"
        write_batch_json(out, batches, root=ROOT, subdir=subdir, limits=limits)
        doc = json.loads(out.read_text(encoding="utf-8"))
    assert [(b["bytes"], b["files"], b["paths"]) for b in doc["batches"]] == [
        (b.bytes, b.files, [p for p, _d in b.paths]) for b in batches
    ]
    assert [b["dirs"] for b in doc["batches"]] == [sum(d for _p, d in b.paths) for b in batches]


@settings(max_examples=100, deadline=None)
@given(tree=trees, max_bytes=st.integers(0, 150), min_frac=st.floats(0, 1))
def test_pure_planner_matches_the_manifest_planner(
    tree: Tree, max_bytes: int, min_frac: float
) -> None:
    """plan_tree on an in-memory tree gives what the manifest-backed planner gives."""
    limits = Limits(max_bytes, int(max_bytes * min_frac))

    def node(path: str, value) -> Node:
        files = sum(1 for _ in uploadable_leaves(value))
        return Node(path, tree_size(value), files, isinstance(value, dict))

    def children(n: Node) -> list[Node]:
        sub = tree
        for part in filter(None, n.path.split("/")):
            sub = sub[part]
        kids = [
            node(f"{n.path}/{k}" if n.path else k, v)
            for k, v in sub.items()
            if isinstance(v, (dict, int, tuple))
        ]
        return sorted(kids, key=lambda c: (not c.is_dir, c.path))

    with make_manifest(":memory:", tree) as manifest:
        assert plan_tree(node("", tree), children, limits) == plan_manifest(manifest, "", limits)


def uploadable_leaves(value) -> Iterator[object]:
    if isinstance(value, dict):
        for v in value.values():
            yield from uploadable_leaves(v)
    elif isinstance(value, (int, tuple)):
        yield value


# -- examples --------------------------------------------------------------------------------


def plan_of(tree: Tree, limits: Limits, subdir: str = "") -> list[Batch]:
    with make_manifest(":memory:", tree) as manifest:
        batches = plan_manifest(manifest, subdir, limits)
        check_plan(manifest, subdir, limits, batches)
        return batches


def test_a_directory_that_fits_goes_whole() -> None:
    tree = {"big": {"x": 80, "y": 80}, "small": {"sub": {"f": 3}, "g": 4}}
    batches = plan_of(tree, Limits(100, 0))
    assert Batch(7, 2, (("small", True),)) in batches
    assert [b.kind for b in batches] == ["file", "file", "dir"]


def test_the_whole_selection_fits() -> None:
    assert plan_of({"a": {"f": 1}, "g": 2}, Limits(100, 10)) == [Batch(3, 2, (("", True),))]


def test_loose_files_of_an_oversize_directory_are_packed() -> None:
    files = {f"f{i:03d}.fits": 10 for i in range(100)}
    tree = {"tiles": {"big": {"a": 900}, **files}}
    batches = plan_of(tree, Limits(1000, 100))
    with make_manifest(":memory:", tree) as manifest:
        original = original_batch_count(manifest, "", 1000)
    assert original == 101  # the original: one batch per loose file, plus the subdir
    assert len(batches) == 11
    assert batches[0] == Batch(900, 1, (("tiles/big", True),))
    assert all(b.bytes == 100 and b.files == 10 for b in batches[1:])
    assert batches[1].paths[0] == ("tiles/f000.fits", False)


def test_small_siblings_are_merged_towards_the_minimum() -> None:
    tree = {"night": {f"{n}": {"a": 3, "b": 4} for n in range(10)} | {"huge": {"x": 95}}}
    batches = plan_of(tree, Limits(100, 20))
    # night/9 (7 bytes) cannot join "huge" (over the max): it joins its other neighbour
    assert [b.bytes for b in batches] == [21, 21, 28, 95]
    assert batches[0].paths == (("night/0", True), ("night/1", True), ("night/2", True))
    assert [b.kind for b in batches] == ["group", "group", "group", "dir"]


def test_min_equal_to_max_packs_tightly_and_min_zero_packs_nothing() -> None:
    tree = {"d": {f"f{i}": 10 for i in range(25)}}
    assert [b.files for b in plan_of(tree, Limits(100, 100))] == [10, 10, 5]
    assert len(plan_of(tree, Limits(100, 0))) == 25


def test_a_file_larger_than_the_maximum_is_its_own_batch() -> None:
    tree = {"d": {"a": 5, "huge": 500, "z": 5}}
    batches = plan_of(tree, Limits(100, 50))
    assert Batch(500, 1, (("d/huge", False),)) in batches
    assert sum(b.files for b in batches) == 3


def test_max_files_splits_a_directory_that_fits_in_bytes() -> None:
    tree = {"many": {f"f{i:02d}": 1 for i in range(25)}, "few": {"a": 1}}
    batches = plan_of(tree, Limits(10**6, 10**6, max_files=10))
    # "few" waits for a sibling to pack with while "many" is split; none comes
    assert [(b.files, b.kind) for b in batches] == [
        (10, "group"),
        (10, "group"),
        (5, "group"),
        (1, "dir"),
    ]


def test_empty_directories_and_unuploadable_entries_make_no_batch() -> None:
    tree = {"empty": {}, "nested": {"e": {}}, "lnk": "linkdir", "fifo": "other", "f": 0, "g": 5}
    assert plan_of(tree, Limits(1, 0)) == [
        Batch(0, 1, (("f", False),)),
        Batch(5, 1, (("g", False),)),
    ]
    assert plan_of({"empty": {}, "lnk": "linkdir"}, Limits(10, 0)) == []


def test_symlinked_files_are_planned() -> None:
    batches = plan_of({"d": {"real": 5, "alias": ("link", 5)}}, Limits(6, 0))
    assert sorted(p for b in batches for p, _d in b.paths) == ["d/alias", "d/real"]


def test_limits_are_checked() -> None:
    with pytest.raises(UsageError, match="larger than"):
        Limits(10, 20)
    with pytest.raises(UsageError):
        Limits(10, 0, max_files=0)


def test_subdir_relative_absolute_and_missing() -> None:
    with make_manifest(":memory:", {"spectro": {"redux": {"f": 1}}, "x": "linkdir"}) as m:
        assert resolve_subdir(m, None) == ""
        assert resolve_subdir(m, "spectro/redux/") == "spectro/redux"
        assert resolve_subdir(m, "./spectro") == "spectro"
        assert resolve_subdir(m, f"{ROOT}/spectro/redux") == "spectro/redux"
        assert resolve_subdir(m, ROOT) == ""
        assert resolve_subdir(m, "edr/spectro") == "spectro"  # as written in object keys
        assert resolve_subdir(m, "spectro/redux/f") == "spectro/redux/f"
        for bad in ("nope", "/elsewhere/spectro", "../edr", "x"):
            with pytest.raises(UsageError):
                resolve_subdir(m, bad)


def test_a_file_as_the_selection() -> None:
    tree = {"d": {"f": 7}}
    assert plan_of(tree, Limits(1, 0), subdir="d/f") == [Batch(7, 1, (("d/f", False),))]


def test_store_plan_replaces_the_plan_and_records_options() -> None:
    with make_manifest(":memory:", {"a": {"f": 1}, "b": {"g": 2}}) as m:
        store_plan(m, "", Limits(1, 0), plan_manifest(m, "", Limits(1, 0)))
        assert len(list(m.iter_batches())) == 2
        limits = Limits(100, 0, max_files=5)
        store_plan(m, "b", limits, plan_manifest(m, "b", limits))
        assert [p for *_x, p in m.iter_batches()] == [[("b", True)]]
        options = json.loads(m.get_meta("plan_options"))
        assert options["subdir"] == "b"
        assert options["max_files"] == 5
        assert m.get_meta("plan_subdir") == "b"


def test_scale_200k_rows_correct() -> None:
    """10k directories of 20 files with heavy-tailed sizes: correctness only, never timing."""
    rng = random.Random(5)
    entries = [Entry("", "dir", 0)]
    for g in range(100):
        entries.append(Entry(f"g{g:02d}", "dir", 0))
        for d in range(100):
            path = f"g{g:02d}/d{d:02d}"
            entries.append(Entry(path, "dir", 0))
            for f in range(20):
                size = int(rng.paretovariate(1.2) * 1000)
                entries.append(Entry(f"{path}/f{f:02d}.fits", "file", size, 1))
    manifest = Manifest.open(":memory:", create=True)
    crawl = manifest.begin_crawl(ROOT)
    with manifest.atomic():
        manifest.put_entries(crawl, entries)
    manifest.close_crawl(crawl)
    limits = Limits(200_000, 50_000, max_files=500)
    selection = Selection.load(manifest, "")
    batches = selection.plan(limits)
    assert sum(b.files for b in batches) == 200_000
    seen: set[str] = set()
    for b in batches:
        covered = [e.path for e in manifest.batch_entries(list(b.paths))]
        assert len(covered) == b.files
        seen.update(covered)
        if b.files > 1:
            assert limits.fits(b.bytes, b.files)
    assert len(seen) == 200_000
    assert len(batches) < selection.original_batch_count(limits.max_bytes)
    manifest.close()


# -- the command -----------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    tree = {
        "spectro": {
            "redux": {f"tile{i}": {"coadd.fits": 300_000, "zbest.fits": 1000} for i in range(9)},
            "loose.txt": 10,
        },
        "doc": {"README": 100},
    }
    path = tmp_path / "mirror.db"
    make_manifest(path, tree).close()
    return path


def test_cli_summary_and_batch_json(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "batch.json"
    args = ("plan", "--db", str(db), "--max-batch-size", "1MB", "--min-batch-size", "500kB")
    proc = run_cli(*args, "--json", str(out), check=True)
    assert "planned 6 batches for the whole tree: 20 files, 2.71 MB" in proc.stdout
    assert "whole directories 1, packed groups 4, single files 1" in proc.stdout
    assert "the original batch.py would make 11 batches" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["root"] == ROOT
    assert doc["subdir"] == ""
    assert (doc["max_batch_size"], doc["min_batch_size"]) == (10**6, 500_000)
    assert [b["id"] for b in doc["batches"]] == [1, 2, 3, 4, 5, 6]
    first = doc["batches"][0]
    assert first["paths"] == ["spectro/redux/tile0", "spectro/redux/tile1"]
    assert (first["bytes"], first["files"], first["dirs"]) == (602_000, 4, 2)
    assert sum(b["files"] for b in doc["batches"]) == 20
    assert doc["batches"][-1]["paths"] == ["doc"]  # no sibling to pack with
    assert len(out.read_text().splitlines()) == len(doc["batches"]) + 9  # one line per batch

    report = json.loads(run_cli(*args, "--json", check=True).stdout)
    assert report["batches"] == 6
    assert report["original_batches"] == 11


def test_cli_subdir_and_errors(db: Path) -> None:
    proc = run_cli("plan", "--db", str(db), "--subdir", f"{ROOT}/spectro/redux", check=True)
    assert "planned 1 batch for 'spectro/redux'" in proc.stdout
    with Manifest.open(db) as m:
        assert m.get_meta("plan_subdir") == "spectro/redux"

    missing = run_cli("plan", "--db", str(db), "--subdir", "spectro/nope")
    assert_clean_error(missing, "spectro/nope")
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1

    bad = run_cli("plan", "--db", str(db), "--min-batch-size", "ten")
    assert_clean_error(bad, "ten")
    assert bad.returncode == 2
    inverted = run_cli(
        "plan", "--db", str(db), "--max-batch-size", "1kB", "--min-batch-size", "1MB"
    )
    assert_clean_error(inverted, "larger than")


def test_entries_whose_directory_entry_is_missing_are_still_planned() -> None:
    manifest = Manifest.open(":memory:", create=True)
    crawl = manifest.begin_crawl(ROOT)
    with manifest.atomic():
        manifest.put_entries(
            crawl,
            [Entry("a/b", "dir", 0), Entry("a/b/f", "file", 5, 1), Entry("c/g", "file", 7, 1)],
        )
    manifest.close_crawl(crawl)
    limits = Limits(6, 0)
    batches = plan_manifest(manifest, resolve_subdir(manifest, None), limits)
    check_plan(manifest, "", limits, batches)
    manifest.close()
