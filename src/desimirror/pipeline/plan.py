"""Cut the selected part of the manifest into upload batches a person can read.

A batch is a unit of work for the uploader and for the operator watching it: "this
directory", "this file", or "these siblings". Progress is recorded per file elsewhere, so a
plan can be replaced at any time without losing anything already sent.

The rule, for a selection directory and limits (max bytes, min bytes, optional max files):

* a directory that fits the limits goes whole, as one path, without reading its files;
* a directory that does not fit is split: its too-large subdirectories are split in turn,
  and everything else in it (loose files and subdirectories that fit) is a sequence of
  *items*, in the manifest's order (directories first, then by name);
* consecutive items are packed into one batch until the batch reaches the minimum size,
  never beyond the maximum bytes or files; a pack still under the minimum at the end (or
  cut short by a large neighbour) joins the previous batch of the same directory when it
  fits. So ``--min-batch-size`` is the target size of packed batches and
  ``--max-batch-size`` the hard cap: ``min == max`` packs as tightly as possible, ``min = 0``
  gives every item its own batch;
* a file larger than the maximum is a batch of its own, the only batch allowed over it.

The original ``batch.py`` made one batch per loose file of every oversize directory (about
800 of its 3,860 EDR batches were single files); :func:`original_batch_count` counts what it
would make here, for comparison.

The planning itself (:func:`plan_tree`) is a pure function of a tree of :class:`Node`; the
manifest side (:class:`Selection`) loads only aggregate counts up front (two scans of the
selected range) and then one indexed query per directory that has to be split, so the
files of a directory that goes whole are never read.
"""

from __future__ import annotations

import gc
import json
import os
import posixpath
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from pathlib import Path
from typing import Literal, NamedTuple

from desimirror.errors import UsageError
from desimirror.state.manifest import Entry, Manifest, roll_up

DEFAULT_MAX_BATCH_SIZE = 10**12  # 1 TB, as the seed's makefile
DEFAULT_MIN_BATCH_SIZE = 10 * 10**9  # 10 GB, the seed's "10 gigabytes to 1 terabyte"

BatchKind = Literal["dir", "file", "group"]


# -- the pure planner ------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What a batch may hold; ``min_bytes`` is the size packing aims for, not a guarantee."""

    max_bytes: int = DEFAULT_MAX_BATCH_SIZE
    min_bytes: int = 0
    max_files: int | None = None

    def __post_init__(self) -> None:
        if self.max_bytes < 0 or self.min_bytes < 0:
            raise UsageError("batch sizes must not be negative")
        if self.min_bytes > self.max_bytes:
            raise UsageError(
                f"--min-batch-size ({self.min_bytes:,} B) is larger than "
                f"--max-batch-size ({self.max_bytes:,} B)"
            )
        if self.max_files is not None and self.max_files < 1:
            raise UsageError("--max-files must be at least 1")

    def fits(self, nbytes: int, nfiles: int) -> bool:
        return nbytes <= self.max_bytes and (self.max_files is None or nfiles <= self.max_files)


class Node(NamedTuple):
    """A file, or a directory with the recursive totals of the uploadable files below it.

    (A named tuple, like :class:`Batch`: a plan of a million files makes millions of them,
    and a frozen dataclass costs twice as much to build.)
    """

    path: str
    bytes: int
    files: int
    is_dir: bool


class Batch(NamedTuple):
    """Paths in manifest order (directories first); each directory path means its subtree."""

    bytes: int
    files: int
    paths: tuple[tuple[str, bool], ...]

    @property
    def kind(self) -> BatchKind:
        """'dir' or 'file' for a batch of one path, 'group' for packed siblings."""
        if len(self.paths) > 1:
            return "group"
        return "dir" if self.paths[0][1] else "file"


Children = Callable[[Node], Iterable[Node]]


def plan_tree(top: Node, children: Children, limits: Limits) -> list[Batch]:
    """Batches covering every file under ``top`` exactly once; see the module docstring.

    ``children(node)`` lists a directory's entries in the order batches should follow; it
    is only called for directories that have to be split.
    """
    if top.files == 0:
        return []
    if not top.is_dir or limits.fits(top.bytes, top.files):
        return [Batch(top.bytes, top.files, ((top.path, top.is_dir),))]
    out: list[Batch] = []
    with _gc_paused():
        _split(top, children, limits, out)
    return out


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Millions of small, acyclic objects make the cyclic collector rescan the growing plan
    again and again (a third of the time on a 1M-file tree); nothing here needs it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _split(directory: Node, children: Children, limits: Limits, out: list[Batch]) -> None:
    packer = _Packer(limits, out)
    for child in children(directory):
        if child.files == 0:
            continue  # empty directories hold nothing to send
        if child.is_dir and not limits.fits(child.bytes, child.files):
            _split(child, children, limits, out)
        else:
            packer.add(child)
    packer.close()


@dataclass(slots=True)
class _Packer:
    """Packs one directory's items; its batches go into ``out`` as they are closed."""

    limits: Limits
    out: list[Batch]
    items: list[Node] = field(default_factory=list)
    nbytes: int = 0
    nfiles: int = 0
    last: int | None = None  # index in ``out`` of this directory's previous batch

    def add(self, item: Node) -> None:
        if self.items and not self.limits.fits(self.nbytes + item.bytes, self.nfiles + item.files):
            self.close()
        self.items.append(item)
        self.nbytes += item.bytes
        self.nfiles += item.files
        if self.nbytes >= self.limits.min_bytes:
            self.close()

    def close(self) -> None:
        if not self.items:
            return
        paths = tuple([(n.path, n.is_dir) for n in self.items])
        prev = self.out[self.last] if self.last is not None else None
        if (
            prev is not None
            and self.nbytes < self.limits.min_bytes
            and self.limits.fits(prev.bytes + self.nbytes, prev.files + self.nfiles)
        ):
            # an undersized remainder rides with its predecessor rather than stand alone
            self.out[self.last] = Batch(
                prev.bytes + self.nbytes, prev.files + self.nfiles, prev.paths + paths
            )
        else:
            self.out.append(Batch(self.nbytes, self.nfiles, paths))
            self.last = len(self.out) - 1
        self.items, self.nbytes, self.nfiles = [], 0, 0


# -- the selection, read from the manifest -------------------------------------------------


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


@dataclass
class Selection:
    """The directories under one selection path with their recursive totals.

    Loading costs two scans of the selected key range (directories, and per-directory sums
    of uploadable files), whatever the number of files; files are read later, per
    directory, only for the directories the planner splits.
    """

    manifest: Manifest
    path: str
    top: Node
    totals: dict[str, tuple[int, int]]  # dir -> (bytes, files), recursive
    direct_files: dict[str, int]  # dir -> number of its own uploadable files
    subdirs: dict[str, list[str]]  # dir -> child directories, by name

    @classmethod
    def load(cls, manifest: Manifest, path: str) -> Selection:
        """The selection at relative ``path`` (see :func:`resolve_subdir`), counted."""
        entry = manifest.get(path)
        if entry is not None and entry.kind != "dir":
            size, files = (entry.size, 1) if _is_uploadable(entry) else (0, 0)
            top = Node(path, size, files, False)
            return cls(manifest, path, top, {}, {}, {})
        direct = manifest.direct_totals(path)
        dirs = {path}
        dirs.update(manifest.directories_below(path))
        for d in [*direct, *dirs]:  # an entry whose directory is missing still gets planned
            while d != path:
                dirs.add(d)
                d = _parent(d)
                if d in dirs:
                    break
        subdirs: dict[str, list[str]] = {d: [] for d in dirs}
        for d in dirs:
            if d != path:
                subdirs[_parent(d)].append(d)
        for names in subdirs.values():
            names.sort()
        totals = _propagate(dirs, path, direct)
        top = Node(path, *totals[path], True)
        direct_files = {d: n for d, (_b, n) in direct.items()}
        return cls(manifest, path, top, totals, direct_files, subdirs)

    def children(self, node: Node) -> Iterator[Node]:
        """A directory's subdirectories, then its uploadable files, each by name."""
        for d in self.subdirs.get(node.path, ()):
            yield Node(d, *self.totals[d], True)
        if self.direct_files.get(node.path):
            for p, size in self.manifest.uploadable_children(node.path):
                yield Node(p, size, 1, False)

    def plan(self, limits: Limits) -> list[Batch]:
        return plan_tree(self.top, self.children, limits)

    def original_batch_count(self, max_bytes: int) -> int:
        """Batches the original ``batch.py`` would make: a node that fits (or a file) is one
        batch, empty directories and zero-byte files included; anything else is recursed."""
        if not self.top.is_dir:
            return 1 if self.top.files else 0
        count = 0
        stack = [self.path]
        while stack:
            d = stack.pop()
            if self.totals[d][0] <= max_bytes:
                count += 1
            else:
                count += self.direct_files.get(d, 0)
                stack.extend(self.subdirs[d])
        return count


def _is_uploadable(entry: Entry) -> bool:
    return entry.kind == "file" or (entry.kind == "link" and entry.link_kind == "file")


def _propagate(
    dirs: set[str], top: str, direct: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    """Recursive (bytes, files) per directory below ``top`` (:func:`roll_up`, twice)."""
    nbytes = roll_up({d: direct.get(d, (0, 0))[0] for d in dirs}, top)
    nfiles = roll_up({d: direct.get(d, (0, 0))[1] for d in dirs}, top)
    return {d: (nbytes[d], nfiles[d]) for d in dirs}


def resolve_subdir(manifest: Manifest, subdir: str | None) -> str:
    """The manifest path of a ``--subdir``: relative to the crawled root, or absolute under
    it (the original makefile passes ``$(release)/...``). Anything else is a UsageError."""
    if subdir is None or subdir.strip() in ("", "."):
        return _checked(manifest, "", subdir or "")
    text = subdir.strip()
    if os.path.isabs(text):
        rel = _relative_to_root(text, manifest.root)
        if rel is None:
            where = manifest.root or "(none: this db was imported without --root)"
            raise UsageError(f"--subdir {text} is not under the crawled root {where}")
        return _checked(manifest, rel, text)
    rel = posixpath.normpath(text.replace(os.sep, "/"))
    if rel == ".." or rel.startswith("../"):
        raise UsageError(f"--subdir {text} leaves the crawled root")
    rel = "" if rel == "." else rel
    name = manifest.root_name
    if rel and manifest.get(rel) is None and name and (rel == name or rel.startswith(name + "/")):
        rel = rel[len(name) + 1 :]  # 'edr/spectro' as written in object keys
    return _checked(manifest, rel, text)


def _relative_to_root(path: str, root: str | None) -> str | None:
    if not root:
        return None
    for candidate, base in (
        (os.path.normpath(path), os.path.normpath(root)),
        (os.path.realpath(path), os.path.realpath(root)),
    ):
        try:
            rel = os.path.relpath(candidate, base)
        except ValueError:
            continue
        if rel != ".." and not rel.startswith(".." + os.sep):
            return "" if rel == "." else rel.replace(os.sep, "/")
    return None


def _checked(manifest: Manifest, rel: str, given: str) -> str:
    entry = manifest.get(rel)
    if entry is None:
        if rel == "" and manifest.has_entries():
            return rel  # a tree without a root entry: still the whole tree
        if rel == "":
            raise UsageError(f"{manifest.path} has no entries: run 'desimirror crawl' first")
        raise UsageError(f"--subdir {given} is not in the manifest {manifest.path}")
    if entry.kind != "dir" and not _is_uploadable(entry):
        what = f"symlink ({entry.link_kind})" if entry.kind == "link" else "special file"
        raise UsageError(f"--subdir {given} is a {what}, which is never uploaded")
    return rel


# -- the manifest-level entry points ---------------------------------------------------------


def plan_manifest(manifest: Manifest, subdir: str, limits: Limits) -> list[Batch]:
    """Batches for the selection at relative path ``subdir`` (already resolved)."""
    return Selection.load(manifest, subdir).plan(limits)


def original_batch_count(manifest: Manifest, subdir: str, max_bytes: int) -> int:
    """How many batches the original ``batch.py`` would make for the same selection."""
    return Selection.load(manifest, subdir).original_batch_count(max_bytes)


def store_plan(
    manifest: Manifest,
    subdir: str,
    limits: Limits,
    batches: list[Batch],
    *,
    partial: bool = False,
) -> int:
    """Replace the stored plan and record its options, in one transaction.

    The uploader reads ``plan_subdir`` to know the planned selection (key collisions,
    totals), so plan and options must never disagree, even after a kill -9. ``partial``
    records that the plan was made, as asked, over a crawl that did not finish.
    """
    crawl = manifest.last_crawl_id()
    options = {
        "partial": partial,
        "subdir": subdir,
        "max_batch_size": limits.max_bytes,
        "min_batch_size": limits.min_bytes,
        "max_files": limits.max_files,
        "crawl_id": crawl,
        "planned_at": time.time(),
    }
    meta = {"plan_subdir": subdir, "plan_options": json.dumps(options)}
    rows = ((b.bytes, b.files, list(b.paths)) for b in batches)
    return manifest.replace_plan(rows, meta=meta)


# -- reports ---------------------------------------------------------------------------------


def summarize(batches: list[Batch], limits: Limits) -> dict[str, int]:
    """The numbers an operator checks before a multi-day upload."""
    kinds = {"dir": 0, "file": 0, "group": 0}
    for b in batches:
        kinds[b.kind] += 1
    sizes = [b.bytes for b in batches]
    return {
        "batches": len(batches),
        "files": sum(b.files for b in batches),
        "bytes": sum(sizes),
        "whole_dirs": kinds["dir"],
        "single_files": kinds["file"],
        "packed_groups": kinds["group"],
        "largest_batch_bytes": max(sizes, default=0),
        "smallest_batch_bytes": min(sizes, default=0),
        "under_min": sum(1 for s in sizes if s < limits.min_bytes),
        "over_max": sum(1 for s in sizes if s > limits.max_bytes),
    }


def write_batch_json(
    path: str | Path, batches: list[Batch], *, root: str | None, subdir: str, limits: Limits
) -> None:
    """Write the plan as batch.json: one batch per line, so 10k batches stay greppable.

    ``paths`` are relative to the crawled root; the first ``dirs`` of them are directories
    taken whole, the rest single files. Written to a temporary name and renamed, so a
    reader never sees half a file.
    """
    path = Path(path)
    head = {
        "root": root,
        "subdir": subdir,
        "max_batch_size": limits.max_bytes,
        "min_batch_size": limits.min_bytes,
        "max_files": limits.max_files,
    }
    lines = ["{"]
    lines += [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    if batches:
        lines.append('  "batches": [')
        lines.append(",\n".join(_json_record(n, b) for n, b in enumerate(batches, start=1)))
        lines.append("  ]")
    else:
        lines.append('  "batches": []')
    lines.append("}")
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def _json_record(n: int, b: Batch) -> str:
    # by hand around the C string encoder: json.dumps per batch was the slowest step of a
    # million-batch plan
    paths = ", ".join([encode_basestring(p) for p, _d in b.paths])
    dirs = sum(1 for _p, d in b.paths if d)
    return (
        f'    {{"id": {n}, "bytes": {b.bytes}, "files": {b.files}, "dirs": {dirs}, '
        f'"paths": [{paths}]}}'
    )
