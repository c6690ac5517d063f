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
so memory is bounded by one directory's listing per level of depth; the depth is bounded
by what PATH_MAX allows (:data:`MAX_DEPTH`), sizes by the db's integers (:data:`MAX_SIZE`).

An import is a crawl without a look at the tree: without a root it has no mtimes and no
identities, so nothing can be uploaded from it. Given the root where the tree is,
:class:`LocalTree` stats every node there as the crawl would (the original's find.py
followed symlinks; the import does not), and the import is a crawl of the paths the file
lists.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring_ascii  # what json.dump uses for ensure_ascii
from operator import itemgetter
from pathlib import Path
from typing import TextIO

from desimirror.errors import UsageError
from desimirror.integrity.sourcetree import SourceRefused, SourceTree
from desimirror.pipeline.crawl import (
    CHUNK_ROWS,
    ERROR_EXAMPLES,
    CrawlSummary,
    LoadMode,
    RowWriter,
    TreeRoot,
    classify_link,
    close_crawl,
    open_row_writer,
    os_error_reason,
    resolve_root,
)
from desimirror.progress import NullProgress, Progress
from desimirror.state.manifest import Entry, Manifest

UNKNOWN, DIRECTORY, FILE = -1, 0, 1
_KINDS = {DIRECTORY: "dir", FILE: "file", UNKNOWN: "other"}
_READ_CHARS = 1 << 20


# ---------------------------------------------------------------- writing


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
    write, encode = out.write, encode_basestring_ascii
    write(f"[{encode(name)},{DIRECTORY},{root.size}")
    nodes = 1
    stack = [("", iter(manifest.typed_children("")))]
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
            stack.append((path, iter(manifest.typed_children(path))))
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

#: The deepest a node may lie, in path components below the root. The original lists
#: every directory by its absolute path, which PATH_MAX (4,096 bytes) limits to 2,048
#: components ("/a" each), so no find.py tree is deeper; a deeper file would cost time and
#: memory quadratic in its depth (every row holds its whole path) before anything is known.
MAX_DEPTH = 2048
#: The longest path a node may have below the root, in characters: find.py could list no
#: directory past PATH_MAX (4,096 bytes) nor name anything in it past NAME_MAX (255), and a
#: character is at least a byte. Bounds the memory a row takes, whatever the depth.
MAX_PATH = 4096 + 255
#: The largest size a node may declare: the state db's integers are signed 64-bit.
MAX_SIZE = (1 << 63) - 1
#: The node types as find.py writes them (``int(Entry_type)``), by their text.
_TYPES = {"-1": UNKNOWN, "0": DIRECTORY, "1": FILE}
#: Sizes of at most this many digits are below 2^63 without a comparison.
_SAFE_DIGITS = 18

# A node header: '[', the name (a JSON string), the type and the size, with the closing
# ']' if the node has no children (most nodes: files); or a lone closing ']'. Every header
# but the first is preceded by a comma (a child or a next sibling). The type and the size
# are read as any JSON scalar (a number, a string, true, null) and checked afterwards, so
# that a bad one is refused with the path of its node rather than as a syntax error.
_VALUE = r'"(?:[^"\\]|\\.)*"|[^\s,\[\]"]+'
_TOKEN = re.compile(
    rf"""\s*(?:
        (?P<comma>,\s*)?\[\s*"(?P<name>(?:[^"\\]|\\.)*)"\s*,\s*(?P<type>{_VALUE})\s*,
        \s*(?P<size>{_VALUE})\s*(?P<leaf>\])?
      | (?P<close>\])
    )\s*""",
    re.VERBOSE | re.DOTALL,
)

# Most nodes are files, written as find.py writes them: a leaf of a plain name (no escape),
# a valid type and a size of at most _SAFE_DIGITS digits, right after a comma. Matched
# first, by this simpler pattern; anything else goes to _TOKEN, which checks it all.
_LEAF = re.compile(rf',\["([^"\\]*)",(1|0|-1),([0-9]{{1,{_SAFE_DIGITS}}})\]')

#: (name, type, size, leaf): a leaf has no children and no closing event of its own.
Node = tuple[str, int, int, bool]


def iter_tree_json(stream: TextIO) -> Iterator[Node | None]:
    """The nodes of a find.json as they come: ``(name, type, size, leaf)`` on entering a
    node, ``None`` on leaving one that is not a leaf (leaves close at once, with no event).
    Reads ``stream`` in chunks; raises UsageError on bad input: a type that is not -1, 0
    or 1, a size that is not an integer from 0 to 2^63-1 (both naming the node's path), a
    node deeper than :data:`MAX_DEPTH` (as soon as it is met)."""
    buf, pos, offset, eof = "", 0, 0, False
    first = True
    above: list[str] = []  # the names of the nodes entered and not left, the root first
    leaf_match, types = _LEAF.match, _TYPES
    while True:
        leaf = leaf_match(buf, pos) if above else None
        if leaf is not None and len(above) <= MAX_DEPTH:
            name, typ, size = leaf.groups()
            pos = leaf.end()
            yield name, types[typ], int(size), True
            continue
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
            _check_end(buf[pos:], offset + pos, len(above), first)
            return
        if match.group("close"):
            if not above:
                raise UsageError(f"not a find.json tree: stray ']' at character {offset + pos}")
            above.pop()
            yield None
        else:
            if bool(match.group("comma")) == first or (not above and not first):
                raise UsageError(f"not a find.json tree: bad separator at character {offset + pos}")
            if len(above) > MAX_DEPTH:
                raise UsageError(
                    f"not a find.json tree: nodes nested deeper than {MAX_DEPTH:,} levels "
                    f"(at character {offset + pos}); PATH_MAX allows no more"
                )
            first = False
            name = _decode_name(match["name"])
            typ = _TYPES.get(match["type"])
            if typ is None:
                raise UsageError(
                    f"unknown node type {_shown(match['type'])} for {_where(above, name)}"
                )
            raw = match["size"]
            if len(raw) <= _SAFE_DIGITS and raw.isascii() and raw.isdigit():
                size = int(raw)
            else:
                size = _large_size(raw, above, name)
            leaf = match["leaf"] is not None
            if not leaf:
                above.append(name)
            yield name, typ, size, leaf
        pos = match.end()


def _large_size(raw: str, above: list[str], name: str) -> int:
    """A size of more than :data:`_SAFE_DIGITS` digits if it is below 2^63; else the error
    (negative, too large, or not an integer: a float, a bool, a string, null)."""
    if raw.isascii() and raw.isdigit():
        # int() of a long digit string is slow (and limited); its length already tells
        if len(raw) <= len(str(MAX_SIZE)) and int(raw) <= MAX_SIZE:
            return int(raw)
        problem = f"size {_shown(raw)} for {_where(above, name)} is too large"
    elif raw[:1] == "-" and raw[1:].isascii() and raw[1:].isdigit():
        problem = f"negative size {_shown(raw)} for {_where(above, name)}"
    else:
        problem = f"size {_shown(raw)} for {_where(above, name)} is not an integer"
    raise UsageError(f"{problem}: a find.json size is a number of bytes from 0 to 2^63-1")


def _shown(raw: str) -> str:
    """A value from the file, short and on one line, for a message."""
    text = raw if len(raw) <= 40 else raw[:40] + "..."
    return text if text.isprintable() else repr(text)


def _where(above: list[str], name: str) -> str:
    """A node's path below the root, quoted, for a message."""
    if not above:
        return "the root node"
    path = repr("/".join([*above[1:], name]))
    return path if len(path) <= 200 else path[:200] + "..."


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


_UNSAFE_NAMES = frozenset(("", ".", ".."))


def _check_name(name: str, where: str) -> None:
    """Refuse names that would address anything but a child of their directory."""
    if name in _UNSAFE_NAMES or "/" in name or "\0" in name:
        raise UsageError(
            f"unsafe name {name!r} in {where or 'the root directory'}: a find.json node name "
            "must be a plain file or directory name"
        )


class _Frame:
    """One open node while importing: its path (None if skipped) and the size check; with
    a local tree, its open directory (None for a skipped one, or one let go when deep)."""

    __slots__ = ("bytes", "children", "fd", "files", "names", "path", "size", "type")

    def __init__(self, path: str | None, typ: int, size: int, fd: int | None = None) -> None:
        self.path, self.type, self.size, self.fd = path, typ, size, fd
        self.children = 0  # the sum of the children's declared sizes
        self.files = self.bytes = 0  # the uploadables recorded below it
        self.names: set[str] = set()


# ---------------------------------------------------------------- the tree on this machine

#: Directory descriptors held at most on the way down; deeper levels let their parent's
#: go and reopen it beneath the root when they return to it.
_HELD_FDS = 256
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: What find.json says a node is, and what it is here, in words.
_LISTED = {FILE: "a file", DIRECTORY: "a directory", UNKNOWN: "an unknown entry (type -1)"}
_FOUND = {"file": "a regular file", "dir": "a directory", "other": "a special file"}


class LocalTree:
    """The tree a find.json describes, where it is on this machine: every node is stat'ed
    as the crawl stats it, so the import records what the uploader will check (the real
    kind, size, mtime and identity) and never anything reached through a symlink.

    One ``lstat`` per node, relative to a descriptor of its directory; directories are
    opened from their parent's descriptor with ``O_NOFOLLOW``, so no component below the
    root (which may itself be a symlink, as named) is a symlink. The original followed
    symlinks: a node that is a symlink here is recorded as the crawl records it (a link to
    a file inside the tree is uploaded with its target's bytes; links to directories, out
    of the tree or dangling are not uploaded, and what find.py listed below a linked
    directory is not taken from the file). A node that is gone, of another kind, or of
    another size than find.json says is a crawl error and is not recorded: the tree
    changed since find.py ran.
    """

    def __init__(self, tree: TreeRoot) -> None:
        self.tree = tree
        self.root_fd = os.open(tree.path, _DIR_FLAGS & ~os.O_NOFOLLOW)  # named as given
        self.link_kinds: Counter[str] = Counter()
        self.linked_dirs = 0  # directories find.py listed through a symlink
        self._beneath: SourceTree | None = None

    def close(self, stack: list[_Frame]) -> None:
        for frame in stack:
            self.leave(frame)
        os.close(self.root_fd)
        if self._beneath is not None:
            self._beneath.close()

    def root_entry(self) -> Entry:
        tree = self.tree
        return Entry("", "dir", 0, tree.mtime_ns, None, None, None, *tree.identity)

    def leave(self, frame: _Frame) -> None:
        """Close a directory's descriptor as the import leaves it (never the root's)."""
        if frame.fd is not None and frame.fd != self.root_fd:
            os.close(frame.fd)
        frame.fd = None

    def look(
        self, stack: list[_Frame], name: str, path: str, typ: int, size: int, descend: bool
    ) -> tuple[Entry | None, str | None, int | None]:
        """Stat node ``name`` of the directory on top of ``stack`` (find.json says ``typ``
        and ``size``). Returns the entry to record (None: not recorded), an error to record
        (None: none) and, for a real directory to ``descend`` into, its open descriptor
        (None: its subtree in the file is skipped)."""
        if path in self.tree.exclude:
            return None, None, None
        try:
            fd = self._fd_of(stack)
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None, "listed in find.json but gone from the tree; not uploaded (re-crawl)", None
        except SourceRefused as exc:
            return None, f"cannot open its directory: {exc}", None
        except OSError as exc:
            return None, f"cannot stat: {os_error_reason(exc)}", None
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFLNK:
            return self._link(name, path, fd, st, typ, size, descend)
        kind = "file" if fmt == stat.S_IFREG else "dir" if fmt == stat.S_IFDIR else "other"
        if kind != _KINDS[typ]:
            return None, _differs(typ, _FOUND[kind]), None
        if kind == "file" and st.st_size != size:
            return None, _size_differs(st.st_size, size), None
        nbytes = st.st_size if kind == "file" else 0
        entry = Entry(
            path,
            kind,
            nbytes,
            st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            ino=st.st_ino,
            dev=st.st_dev,
        )
        if kind != "dir" or not descend:
            return entry, None, None
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            return (
                entry,
                f"cannot open directory: {os_error_reason(exc)}; its contents not recorded",
                None,
            )
        if len(stack) >= _HELD_FDS:
            self.leave(stack[-1])  # reopened beneath the root if the import comes back to it
        return entry, None, child

    def _fd_of(self, stack: list[_Frame]) -> int:
        frame = stack[-1]
        if frame.fd is None:  # let go on the way down (deep trees): reopen beneath the root
            if self._beneath is None:
                self._beneath = SourceTree(self.tree.path)
            frame.fd = self._beneath.open_beneath(frame.path or "")
        return frame.fd

    def _link(
        self,
        name: str,
        path: str,
        fd: int,
        st: os.stat_result,
        typ: int,
        size: int,
        descend: bool,
    ) -> tuple[Entry | None, str | None, int | None]:
        """A node that is a symlink here, classified as the crawl classifies it."""
        _name, _kind, lsize, mtime, target, link_kind, *identity = classify_link(
            self.tree, name, path, fd, st
        )
        if link_kind == "file":
            if typ != FILE:
                return None, _differs(typ, "a symlink to a file"), None
            if lsize != size:
                return None, _size_differs(lsize, size), None
        elif typ == DIRECTORY and descend:
            self.linked_dirs += 1
        self.link_kinds[link_kind] += 1
        entry = Entry(path, "link", lsize, mtime, target, link_kind, None, *identity)
        return entry, None, None


def _differs(typ: int, found: str) -> str:
    return f"find.json lists {_LISTED[typ]}, here it is {found}; not uploaded (re-crawl)"


def _size_differs(real: int, listed: int) -> str:
    return f"its size is {real:,} bytes, find.json says {listed:,}; not uploaded (re-crawl)"


# ---------------------------------------------------------------- importing


def import_tree_json(
    source: str | os.PathLike[str],
    manifest: Manifest,
    *,
    root: str | None = None,
    progress: Progress | None = None,
) -> CrawlSummary:
    """Load a find.json written by the original ``find.py`` as a crawl of its tree.

    Without ``root``, entries get no mtime and no identity (the format has none): a tree
    to plan and look at, with no local source to upload from; unknowns (type -1) become
    kind 'other'. ``root`` is the absolute path the tree lives at, if it is here: every
    node is then stat'ed there (see :class:`LocalTree`), so the import can be uploaded and
    verified like a crawl. The db is bound to the root and to the JSON root's name.

    A file that turns out bad half-way (a syntax error, an unsafe name like ``..``, a bad
    size, nesting past :data:`MAX_DEPTH`) changes no entry (see :func:`_load`),
    and the failed import is recorded as a crawl with one error. Names
    that are not valid UTF-8 (escaped surrogates, which an S3 key cannot hold) and
    repeated names are skipped with their subtrees and recorded as crawl errors.
    """
    progress = progress or NullProgress()
    started = time.monotonic()
    try:
        stream = open(source, encoding="utf-8")  # noqa: SIM115 - closed in the finally
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    local: LocalTree | None = None
    stack: list[_Frame] = []
    try:
        nodes = iter_tree_json(stream)
        try:
            name, typ, size, _leaf = next(nodes)  # type: ignore[misc]  # never None
        except UsageError as exc:
            raise UsageError(f"{source}: {exc}") from None
        if typ != DIRECTORY:
            raise UsageError(f"{source}: the root node must be a directory (type 0), not {typ}")
        _check_name(name, "the root")
        tree = resolve_root(root, manifest.path) if root is not None else None
        manifest.bind_root(tree.path if tree else None, name)
        crawl_id = manifest.begin_crawl(root or os.path.abspath(source))
        summary = CrawlSummary(crawl_id, root, name, "json")
        first = not manifest.has_entries()
        # nothing is done or failed: every file of a first import is pending, and the
        # tree's counts are written as the directories are left, not counted at the end
        counts_pending = first and manifest.start_pending_counts()
        mode = LoadMode(first=first, one_transaction=not first, pending_counts=counts_pending)
        # forked before the tree's directories are opened, which it need not inherit
        writer = open_row_writer(manifest, crawl_id, summary, mode, fork=hasattr(os, "fork"))
        try:
            if tree is not None:
                local = LocalTree(tree)
            stack.append(_Frame("", typ, size, local.root_fd if local else None))
            progress.start("import")
            totals = _load(nodes, stack, writer, summary, progress, local)
        except UsageError as exc:
            writer.close(ok=False)
            # recorded, and left unfinished: what was loaded is not the tree
            with manifest.atomic():
                if first:
                    manifest.discard_first_crawl(crawl_id)
                manifest.put_crawl_errors(crawl_id, [("", f"import failed: {exc}")])
            raise UsageError(f"{source}: {exc}") from None
        except BaseException:
            writer.close(ok=False)
            raise
        writer.close()
    finally:
        stream.close()
        progress.close()
        if local is not None:
            local.close(stack)
    close_crawl(manifest, summary, [], totals=totals, tree_counted=counts_pending)
    summary.seconds = time.monotonic() - started
    return summary


def _load(
    nodes: Iterator[Node | None],
    stack: list[_Frame],
    writer: RowWriter,
    summary: CrawlSummary,
    progress: Progress,
    local: LocalTree | None,
) -> tuple[int, int]:
    """Hand every node (the root alone on ``stack``) to the ``writer`` as rows, in chunks;
    with a ``local`` tree, as stat'ed there. Each directory's size goes with the chunk in
    which the import leaves it (the sum of the uploadables recorded below it). Returns
    (files, bytes) of the uploadables recorded.

    How the writer writes (:class:`LoadMode`): into a db that holds a tree, in one
    transaction, so that a file bad half-way changes nothing. Into one that holds none (a
    first import): a transaction per chunk with the WAL copied into the db in the
    background, as a crawl writes, so the WAL stays small instead of growing to the size
    of the db (3.5 GB at ten million entries); a file bad half-way has its rows deleted
    again (:meth:`Manifest.discard_first_crawl`), and a kill leaves an unfinished crawl,
    which the commands that need the whole tree refuse, as after a crawl killed. The
    writer is a process of its own where the OS can fork, so that SQLite and this
    tokenizer run on two cores.
    """
    root = stack[0]
    closed: list[tuple[str, int, int]] = []  # (path, files, bytes) of directories left
    # without a tree an item is (name, kind, size): the rest is unknown (NULL in the db)
    items: list[tuple] = [local.root_entry().row()[2:] if local else ("", "dir", 0)]
    groups: list[tuple[str | None, list[tuple]]] = [(None, items)]  # None: the root's row
    items_of: str | None = None  # the directory whose rows ``items`` holds
    chunk = 1
    errors: list[tuple[str, str]] = []
    mismatched = 0
    uploadable = 0  # bytes: their sum must fit the db's integers too
    chunk_bytes = 0  # of the uploadables in rows
    kinds = summary.kinds

    def error(path: str, message: str) -> None:
        summary.errors += 1
        if len(summary.error_examples) < ERROR_EXAMPLES:
            summary.error_examples.append((path, message))
        errors.append((path, message))

    def flush() -> None:
        nonlocal uploadable, chunk_bytes, groups, errors, closed, chunk
        nbytes, chunk_bytes = chunk_bytes, 0
        uploadable += nbytes
        if uploadable > MAX_SIZE:
            raise UsageError("the files' sizes add up to more than 2^63-1 bytes")
        for _directory, group in groups:
            kinds.update(map(itemgetter(1), group))
        writer.put(groups, errors, closed)
        summary.entries += chunk
        progress.advance(files=chunk, nbytes=nbytes)
        groups, errors, closed, chunk = [], [], [], 0

    for node in nodes:
        if node is None:
            done = stack.pop()
            if local is not None:
                local.leave(done)
            mismatched += done.type == DIRECTORY and done.children != done.size
            if stack:
                above = stack[-1]
                above.children += done.size
                above.files += done.files
                above.bytes += done.bytes
            if done.files and done.path is not None:
                closed.append((done.path, done.files, done.bytes))
            continue
        parent = stack[-1]
        name, typ, size, leaf = node
        path = _checked_path(node, parent, error)
        fd = None
        item: tuple | None = None
        if path is None:
            pass
        elif local is None:
            if typ == FILE:
                item = (name, "file", size)
                parent.files += 1
                parent.bytes += size
                chunk_bytes += size
            else:
                item = (name, _KINDS[typ], 0 if typ == DIRECTORY else size)
        else:
            entry, problem, fd = local.look(stack, name, path, typ, size, not leaf)
            if entry is not None:
                item = entry.row()[2:]
                if entry.kind == "file" or entry.link_kind == "file":
                    parent.files += 1
                    parent.bytes += entry.size
                    chunk_bytes += entry.size
            if problem is not None:
                error(path, problem)
            if fd is None:
                path = None  # its subtree in the file is not this tree's: skipped
        if item is not None:
            if items_of is not parent.path or not groups:
                items_of, items = parent.path, []
                groups.append((items_of, items))
            items.append(item)
            chunk += 1
        if leaf:
            mismatched += typ == DIRECTORY and size != 0
            parent.children += size
        else:
            stack.append(_Frame(path, typ, size, fd))
        if chunk >= CHUNK_ROWS:
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
    if local is not None:
        summary.link_kinds.update(local.link_kinds)
        if local.linked_dirs:
            summary.warnings.append(
                f"directories find.json lists that are symlinks here: {local.linked_dirs:,}; "
                "recorded as symlinks (not uploaded), their contents where they really are"
            )
    return root.files, root.bytes


def _checked_path(node: Node, parent: _Frame, error: Callable[[str, str], None]) -> str | None:
    """Check one node against its parent; returns its path, or None if it is skipped
    (with its subtree)."""
    name = node[0]
    above = parent.path
    if above is None:  # inside a skipped subtree
        return None
    if parent.type != DIRECTORY:
        raise UsageError(f"not a find.json tree: {above!r} has children but is a file")
    if name in _UNSAFE_NAMES or "/" in name or "\0" in name:
        _check_name(name, above)
    if not name.isascii():  # most names are: no copy made
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = name.encode("utf-8", "backslashreplace").decode("ascii")
            error(f"{above}/{shown}".lstrip("/"), f"name is not valid UTF-8: {name!r}")
            return None
    path = f"{above}/{name}" if above else name
    if len(path) > MAX_PATH:
        raise UsageError(
            f"not a find.json tree: a path of more than {MAX_PATH:,} characters "
            f"({path[:60]!r}...); PATH_MAX allows no such path"
        )
    if name in parent.names:
        error(path, "duplicate name in the same directory; the first one is kept")
        return None
    parent.names.add(name)
    return path
