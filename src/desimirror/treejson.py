"""The seed's ``find.json`` tree format, read and written as a stream.

A node is ``[name, type, size, child1, child2, ...]``: type 0 a directory, 1 a file, -1
anything the original ``find.py`` could not classify (a FIFO, a dangling symlink); a
directory's size is the recursive sum of its children; children are ordered by
(type, name), so unknowns first, then directories, then files, each by name. The original
wrote it with ``json.dump(tree, f, separators=(",", ":"))`` and a newline, which escapes
every non-ASCII character; :func:`write_tree_json` produces those bytes exactly.

Real DR1 trees are about 1 GB. Neither direction holds the tree in memory: the writer walks
the manifest one directory at a time, and the reader is a small incremental tokenizer
(the format has only two tokens: a node header ``[name,type,size`` and a closing ``]``),
so memory is bounded by one directory's listing per level of depth.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring_ascii  # what json.dump uses for ensure_ascii
from pathlib import Path
from typing import TextIO

from desimirror.crawl import CHUNK_ROWS, ERROR_EXAMPLES, CrawlSummary, close_crawl
from desimirror.errors import UsageError
from desimirror.manifest import Entry, Manifest
from desimirror.progress import NullProgress, Progress

UNKNOWN, DIRECTORY, FILE = -1, 0, 1
_KINDS = {DIRECTORY: "dir", FILE: "file", UNKNOWN: "other"}
_READ_CHARS = 1 << 20


# ---------------------------------------------------------------- writing


def node_type(entry: Entry) -> int | None:
    """The find.json type of an entry, or None if the original format has no place for it.

    Links to files inside the tree are files (the original followed links; these are
    uploaded with the target's bytes). Dangling links and 'other' entries are unknowns,
    as the original wrote them. Links to directories and links leaving the tree are left
    out: the original followed them too, which listed a subtree twice or data from outside
    the release; here a directory appears once, at its real place, and nothing outside.
    """
    if entry.kind == "dir":
        return DIRECTORY
    if entry.kind == "file":
        return FILE
    if entry.kind == "other":
        return UNKNOWN
    if entry.link_kind == "file":
        return FILE
    if entry.link_kind == "broken":
        return UNKNOWN
    return None


#: A directory's nodes in the original's order, straight from the parent index: the type
#: as :func:`node_type` gives it (in SQL), then the name. SQLite compares text in its
#: default BINARY collation byte by byte, which for UTF-8 is code point order: the order
#: Python's sort and the original's give. No Entry objects: a million of them cost more
#: than all the queries.
_CHILDREN = """
SELECT name, type, size FROM (
    SELECT name, size, CASE
        WHEN kind = 'dir' THEN 0
        WHEN kind = 'file' OR link_kind = 'file' THEN 1
        WHEN kind = 'other' OR link_kind = 'broken' THEN -1
    END AS type
    FROM entries WHERE parent = ?
) WHERE type IS NOT NULL ORDER BY type, name
"""


def write_tree_json(manifest: Manifest, out: TextIO) -> int:
    """Write the manifest's tree to ``out`` in the seed format; returns the nodes written.

    Directory sizes are the manifest's (the recursive sum of uploadables, set when a crawl
    finishes), so each directory's size is the sum of the sizes of the nodes written below
    it, and it is known before its children: the tree streams out depth first, one
    directory's listing per level in memory. The root node is named after the crawled
    directory.
    """
    root = manifest.get("")
    name = manifest.root_name
    if root is None or name is None:
        raise UsageError(f"{manifest.path} holds no tree yet: run 'desimirror crawl' first")
    conn, write, encode = manifest.conn, out.write, encode_basestring_ascii
    write(f"[{encode(name)},{DIRECTORY},{root.size}")
    nodes = 1
    stack = [("", iter(conn.execute(_CHILDREN, ("",)).fetchall()))]
    while stack:
        parent, children = stack[-1]
        child = next(children, None)
        if child is None:
            write("]")
            stack.pop()
            continue
        child_name, typ, size = child
        nodes += 1
        if typ == DIRECTORY:
            write(f",[{encode(child_name)},0,{size}")
            path = f"{parent}/{child_name}" if parent else child_name
            stack.append((path, iter(conn.execute(_CHILDREN, (path,)).fetchall())))
        else:
            write(f",[{encode(child_name)},{typ},{size}]")
    write("\n")
    return nodes


def export_tree_json(manifest: Manifest, path: str | os.PathLike[str]) -> int:
    """Write find.json to ``path`` atomically: a kill mid-way never leaves a truncated file
    that ``make`` would take as up to date."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="ascii", buffering=1 << 20) as out:
            nodes = write_tree_json(manifest, out)
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return nodes


# ---------------------------------------------------------------- reading

# A node header: '[', the name (a JSON string), the type and the size, with the closing
# ']' if the node has no children (most nodes: files); or a lone closing ']'. Every header
# but the first is preceded by a comma (a child or a next sibling).
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comma>,\s*)?\[\s*"(?P<name>(?:[^"\\]|\\.)*)"\s*,\s*(?P<type>-?\d+)\s*,\s*(?P<size>-?\d+)
        \s*(?P<leaf>\])?
      | (?P<close>\])
    )\s*""",
    re.VERBOSE | re.DOTALL,
)

#: (name, type, size, leaf): a leaf has no children and no closing event of its own.
Node = tuple[str, int, int, bool]


def iter_tree_json(stream: TextIO) -> Iterator[Node | None]:
    """The nodes of a find.json as they come: ``(name, type, size, leaf)`` on entering a
    node, ``None`` on leaving one that is not a leaf (leaves close at once, with no event).
    Reads ``stream`` in chunks; raises UsageError on bad input."""
    buf, pos, offset, eof = "", 0, 0, False
    depth, first = 0, True
    while True:
        match = _TOKEN.match(buf, pos)
        if (match is None or match.end() == len(buf)) and not eof:
            more = _read(stream)  # the token may continue in the next chunk
            if more:
                offset += pos
                buf, pos = buf[pos:] + more, 0
            else:
                eof = True
            continue
        if match is None:
            _check_end(buf[pos:], offset + pos, depth, first)
            return
        if match.group("close"):
            if depth == 0:
                raise UsageError(f"not a find.json tree: stray ']' at character {offset + pos}")
            depth -= 1
            yield None
        else:
            if bool(match.group("comma")) == first or (depth == 0 and not first):
                raise UsageError(f"not a find.json tree: bad separator at character {offset + pos}")
            first = False
            leaf = match["leaf"] is not None
            depth += not leaf
            yield _decode_name(match["name"]), int(match["type"]), int(match["size"]), leaf
        pos = match.end()


def _read(stream: TextIO) -> str:
    try:
        return stream.read(_READ_CHARS)
    except UnicodeDecodeError as exc:
        raise UsageError(f"not a find.json tree: not UTF-8 text ({exc.reason})") from None


def _check_end(rest: str, at: int, depth: int, first: bool) -> None:
    """Fine only if the whole root node was read and nothing but whitespace follows."""
    if rest.strip():
        raise UsageError(f"not a find.json tree: unexpected input at character {at}")
    if first:
        raise UsageError("not a find.json tree: the file is empty")
    if depth:
        raise UsageError(f"not a find.json tree: truncated at character {at}")


def _decode_name(raw: str) -> str:
    if "\\" not in raw:
        return raw
    try:
        return json.loads(f'"{raw}"')
    except ValueError as exc:
        raise UsageError(f"not a find.json tree: bad name {raw[:80]!r}: {exc}") from None


def _check_name(name: str, where: str) -> None:
    """Refuse names that would address anything but a child of their directory."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise UsageError(
            f"unsafe name {name!r} in {where or 'the root directory'}: a find.json node name "
            "must be a plain file or directory name"
        )


class _Frame:
    """One open node while importing: its path (None if skipped) and the size check."""

    __slots__ = ("children", "names", "path", "size", "type")

    def __init__(self, path: str | None, typ: int, size: int) -> None:
        self.path, self.type, self.size = path, typ, size
        self.children = 0  # the sum of the children's declared sizes
        self.names: set[str] = set()


def import_tree_json(
    source: str | os.PathLike[str],
    manifest: Manifest,
    *,
    root: str | None = None,
    progress: Progress | None = None,
) -> CrawlSummary:
    """Load a find.json written by the original ``find.py`` as a crawl of its tree.

    Entries get no mtime (the format has none), so an upload re-checks them against a real
    crawl; unknowns (type -1) become kind 'other'. ``root`` is the absolute path the tree
    lives at, if it is here; the db is bound to it and to the JSON root's name.

    The entries are written in one transaction: a file that turns out bad half-way (a
    syntax error, an unsafe name like ``..``) changes no entry, and the failed import is
    recorded as a crawl with one error. Names that are not valid UTF-8 (escaped surrogates,
    which an S3 key cannot hold) and repeated names are skipped with their subtrees and
    recorded as crawl errors.
    """
    progress = progress or NullProgress()
    started = time.monotonic()
    try:
        stream = open(source, encoding="utf-8")  # noqa: SIM115 - closed in the finally
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        nodes = iter_tree_json(stream)
        name, typ, size, _leaf = next(nodes)  # type: ignore[misc]  # never None
        if typ != DIRECTORY:
            raise UsageError(f"{source}: the root node must be a directory (type 0), not {typ}")
        _check_name(name, "the root")
        manifest.bind_root(root, name)
        crawl_id = manifest.begin_crawl(root or os.path.abspath(source))
        summary = CrawlSummary(crawl_id, root, name, "json")
        progress.start("import")
        try:
            with manifest.atomic():
                _load(nodes, _Frame("", typ, size), manifest, summary, progress)
        except UsageError as exc:
            with manifest.atomic():
                manifest.put_crawl_errors(crawl_id, [("", f"import failed: {exc}")])
            manifest.finish_crawl(crawl_id, complete=False)
            raise UsageError(f"{source}: {exc}") from None
    finally:
        stream.close()
        progress.close()
    close_crawl(manifest, summary, [])
    summary.seconds = time.monotonic() - started
    return summary


def _load(
    nodes: Iterator[Node | None],
    root: _Frame,
    manifest: Manifest,
    summary: CrawlSummary,
    progress: Progress,
) -> None:
    """Write every node below ``root`` into the manifest, in chunks of rows."""
    rows = [Entry("", "dir", 0)]
    errors: list[tuple[str, str]] = []
    stack = [root]
    mismatched = 0

    def error(path: str, message: str) -> None:
        summary.errors += 1
        if len(summary.error_examples) < ERROR_EXAMPLES:
            summary.error_examples.append((path, message))
        errors.append((path, message))

    def flush() -> None:
        for entry in rows:
            summary.kinds[entry.kind] += 1
        manifest.put_entries(summary.crawl_id, rows)
        manifest.put_crawl_errors(summary.crawl_id, errors)
        summary.entries += len(rows)
        progress.advance(files=len(rows), nbytes=sum(e.size for e in rows if e.kind == "file"))
        rows.clear()
        errors.clear()

    for node in nodes:
        if node is None:
            done = stack.pop()
            mismatched += done.type == DIRECTORY and done.children != done.size
            if stack:
                stack[-1].children += done.size
            continue
        parent = stack[-1]
        path = _add_node(node, parent, rows, error)
        _name, typ, size, leaf = node
        if leaf:
            mismatched += typ == DIRECTORY and size != 0
            parent.children += size
        else:
            stack.append(_Frame(path, typ, size))
        if len(rows) >= CHUNK_ROWS:
            flush()
    flush()
    if stack:  # the root was a leaf (an empty tree): no event closed it
        mismatched += root.size != 0
    summary.dirs_scanned = summary.kinds["dir"]
    if mismatched:
        summary.warnings.append(
            f"{mismatched} directory sizes in the file differ from the sum of their "
            "children; the sums are used"
        )


def _add_node(
    node: Node, parent: _Frame, rows: list[Entry], error: Callable[[str, str], None]
) -> str | None:
    """Check one node against its parent and queue its row; returns its path, or None if
    it is skipped (with its subtree)."""
    name, typ, size, _leaf = node
    if parent.path is None:  # inside a skipped subtree
        return None
    if parent.type != DIRECTORY:
        raise UsageError(f"not a find.json tree: {parent.path!r} has children but is a file")
    _check_name(name, parent.path)
    if typ not in _KINDS:
        raise UsageError(f"unknown node type {typ} for {name!r} in {parent.path or 'the root'}")
    if size < 0:
        raise UsageError(f"negative size for {name!r} in {parent.path or 'the root'}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "backslashreplace").decode("ascii")
        error(f"{parent.path}/{shown}".lstrip("/"), f"name is not valid UTF-8: {name!r}")
        return None
    path = f"{parent.path}/{name}" if parent.path else name
    if name in parent.names:
        error(path, "duplicate name in the same directory; the first one is kept")
        return None
    parent.names.add(name)
    rows.append(Entry(path, _KINDS[typ], 0 if typ == DIRECTORY else size))
    return path
