"""Download a mirrored release (or a part of it) into a local directory, every file proven.

``desimirror download s3://BUCKET/RELEASE[/SUBDIR] DIR`` writes each object to
``DIR/KEY``: the bucket's layout (``edr/``, ``raw_spectro_data/``, ``target/``), which
``desimirror env --data DIR`` and ``jupyter --local DIR`` read as they read a mount.

What a file must be (the reference), strongest first:

1. the SHA-256 of the release manifest ``manifest publish`` put beside the release
   (``RELEASE/.desimirror/manifest.tsv.gz``, itself checked against the SHA-256 in
   ``manifest.json``). It also names every file of the release, remapped ones included
   (``raw_spectro_data/``, ``target/``), so no listing is needed;
2. without one, the release's own ``*.sha256sum`` listings found in the listing of the
   prefix (what DESI publishes per directory);
3. else what the object says of itself: its ``ChecksumSHA256`` (whole or composite), or
   its ETag (the MD5 of a single-part object, or the multipart ETag, recomputed with the
   part size a ``HEAD ?partNumber=1`` reports).

Each object is streamed into ``.NAME.desimirror-part`` in its own directory while it is
hashed (one pass, :func:`desimirror.integrity.checksums.hash_stream`); a large one in
parallel ranges, each written at its offset as it arrives and hashed, in order, from the
page cache once written (:class:`_Ranges`). Only when the digest proves it is the file
given its mtime and renamed over ``NAME``. A file that fails its proof is deleted:
nothing unproven ever carries a final name.

Symlinks: the published manifest records the release's own (``link_kind`` ``file`` or
``dir``); each is made again, after the files, pointing where it pointed, its relative
target rewritten for the bucket's layout, when what it points at is downloaded too. A
link to a file whose target is not downloaded is fetched as the copy the bucket holds;
links out of the release, broken or absolute are not made. Nothing is written beneath a
link of the release (a manifest naming a file there is refused for it: a crawl never
descends a link, and the link may lead out of DIR); links a user made in DIR are theirs.

Resuming: how a completed file is recognised. Every proven file is appended to a small
record, ``DIR/.desimirror-download/done.tsv`` (key, size, mtime, what it was proven
against). A file is skipped, without a read or a request, when the record holds it with
the same reference (SHA-256, else ETag) and the file on disk still has the recorded size
and mtime. Size and mtime alone would not do: ``aws s3 sync`` and other tools also set
the mtime from the object's, so a copy nobody proved would pass for one. The record alone
would not do either: a file edited or truncated since would pass. A file at its final name
that the record does not vouch for (a ``kill -9`` between the rename and the record's
line, a lost record, a copy made by another tool) but that has the right size is hashed
in place and kept if it proves, so it is not fetched again; anything else is fetched.
The record is appended by the main thread only and flushed after each line, so a killed
run loses no line the kernel received; one run per directory at a time (a write lock).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import fnmatch
import io
import json
import os
import posixpath
import stat
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desimirror.errors import IncompleteError, RemoteError, UsageError
from desimirror.integrity.checksums import (
    SUFFIX,
    FileDigests,
    corrupt_text,
    guess_part_sizes,
    hash_stream,
    hex_of_b64,
    is_hex_sha256,
    parse_sha256sum,
    same_composite,
)
from desimirror.integrity.releasemanifest import (
    FORMAT,
    VERSION,
    escape,
    manifest_keys_for,
    read_manifest,
    unescape,
)
from desimirror.progress import NullProgress, Progress
from desimirror.retrying import retry_call
from desimirror.state import writelock
from desimirror.storage.keys import KeyMap
from desimirror.storage.listing import list_tree
from desimirror.storage.s3client import (
    bucket_error,
    check_bucket,
    describe_error,
    make_client,
    strip_etag,
)
from desimirror.storage.transfer import S3Target

#: The directory at the top of DIR that holds the record of proven files and its lock.
RECORD_DIR = ".desimirror-download"
RECORD_NAME = "done.tsv"
#: What a file is called while it is written and not yet proven.
PART_SUFFIX = ".desimirror-part"
#: Whole files are the unit: a file cut off by a kill is fetched again from its start.
#: Objects above RANGED_ABOVE bytes are fetched in RANGE_SIZE ranges, WINDOW at a time
#: each, by RANGE_THREADS threads in all (:func:`_fetch_large`); smaller ones in one GET.
#: 16 MiB four at a time rather than 8 MiB six at a time: on an idle 2-core machine the
#: large-files download took 2.0 s against 2.6 s (median of 4; fewer requests, less
#: system time), see bench/README.md.
RANGE_SIZE = 16 << 20
RANGED_ABOVE = RANGE_SIZE
WINDOW = 4
RANGE_THREADS = 16
#: Objects up to this size go through the AWS Common Runtime whole into memory (a third
#: of botocore's client CPU per request, which is most of a small file's cost), where
#: ``awscrt`` imports; 64 transfers of them hold at most 512 MiB.
IN_MEMORY_MAX = 8 << 20
#: Seconds a whole in-memory GET may take before it is given up (and retried).
GET_TIMEOUT = 60.0
#: The most bytes a body is read, written or hashed in at once: copies stay in the CPU's
#: caches (see :class:`_Ranges`).
PIECE = 256 << 10
#: How often the main thread looks for finished transfers: soon after one, then less.
POLL_MIN, POLL_MAX = 0.001, 0.02
#: Attempts per object for transient failures (a 503, a reset connection).
ATTEMPTS = 4
BACKOFF_SECONDS = 0.5


@dataclass(frozen=True)
class DownloadOptions:
    """What to download where; see the module docstring."""

    target: S3Target
    prefix: str  # RELEASE[/SUBDIR], no slashes around it
    dest: Path
    include: tuple[str, ...] = ()
    dry_run: bool = False
    workers: int = 32


@dataclass(frozen=True)
class Wanted:
    """One object to have at ``DIR/key``, and what it must be."""

    key: str
    size: int
    sha256: str | None  # the reference digest, from the manifest or a sha256sum listing
    etag: str | None  # from the listing, where one was made
    mtime: int | None  # seconds, from the manifest: the release's own mtime


@dataclass
class DownloadReport:
    """What a download did; its ``--json`` report."""

    source: str
    dest: str
    reference: str = ""  # "manifest", or "listing" (sha256sum listings, then the objects)
    dry_run: bool = False
    files: int = 0
    bytes: int = 0
    files_fetched: int = 0
    bytes_fetched: int = 0
    files_kept: int = 0  # complete already, by the record: not read, not requested
    bytes_kept: int = 0
    files_proven_in_place: int = 0  # at their final name unrecorded: hashed, kept
    files_to_fetch: int = 0
    bytes_to_fetch: int = 0
    files_failed: int = 0
    dirs_created: int = 0
    links: int = 0  # the release's symlinks recreated as symlinks (made now or found made)
    links_created: int = 0
    links_not_recreated: int = 0  # outside the release, broken or absolute (module docstring)
    proofs: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rate: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class _Refused(Exception):
    """An object whose bytes are not what its reference says: never retried, never kept."""


class _Stopped(Exception):
    """The run is being interrupted: a transfer in flight gives up at its next chunk."""


# -- where a key goes --------------------------------------------------------------------


def local_path(dest: Path, key: str) -> Path:
    """``DEST/KEY``, refusing a key that would land outside ``dest`` or on our own names."""
    parts = key.split("/")
    bad = not key or key.startswith("/") or "\0" in key
    bad = bad or any(p in ("", ".", "..") for p in parts)
    bad = bad or parts[0] == RECORD_DIR or parts[-1].endswith(PART_SUFFIX)
    if bad:
        raise _Refused(f"the key {key!r} cannot be a local path beneath {dest}")
    return dest.joinpath(*parts)


def part_path(final: Path) -> Path:
    """The name a file has while it is written: hidden, in its own directory, so the
    rename is atomic and a kill leaves nothing under the final name."""
    return final.with_name(f".{final.name}{PART_SUFFIX}")


# -- the record of proven files ----------------------------------------------------------


class Record:
    """``DIR/.desimirror-download/done.tsv``: one line per proven file (module docstring)."""

    def __init__(self, dest: Path) -> None:
        self.path = dest / RECORD_DIR / RECORD_NAME
        self.entries: dict[str, tuple[int, int, str]] = {}
        self._out: io.TextIOWrapper | None = None
        try:
            stream = open(self.path, encoding="utf-8", newline="\n")  # noqa: SIM115
        except FileNotFoundError:
            return
        with stream:
            for line in stream:
                cols = line.rstrip("\n").split("\t")
                if len(cols) >= 4 and cols[1].isdigit() and cols[2].lstrip("-").isdigit():
                    self.entries[unescape(cols[0])] = (int(cols[1]), int(cols[2]), cols[3])

    def vouches(self, key: str, reference: str | None, st: os.stat_result) -> bool:
        known = self.entries.get(key)
        if known is None:
            return False
        same_file = known[:2] == (st.st_size, st.st_mtime_ns)
        # no reference known before the GET (a manifest line without a SHA-256): the
        # record and the file's size and mtime are all there is to go by
        return same_file and (reference is None or known[2] == reference)

    def add(self, key: str, size: int, mtime_ns: int, reference: str, proof: str) -> None:
        if self._out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = open(self.path, "a", encoding="utf-8", newline="\n")  # noqa: SIM115
        self._out.write(f"{escape(key)}\t{size}\t{mtime_ns}\t{reference}\t{proof}\n")
        self._out.flush()
        self.entries[key] = (size, mtime_ns, reference)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


# -- what to download --------------------------------------------------------------------


@dataclass
class _Plan:
    wanted: list[Wanted]
    dirs: list[str]  # key paths of directories to create (the manifest's empty ones too)
    meta: list[tuple[str, bytes]]  # (key, bytes) of the manifest itself, to keep beside it
    warnings: list[str] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)  # the release's symlinks, recreated
    links_skipped: int = 0  # outside the release, broken, or absolute: not recreated
    refused: list[str] = field(default_factory=list)  # keys beneath a link of the release


@dataclass(frozen=True)
class Link:
    """A symlink of the release to recreate at ``DIR/key``, pointing at ``target`` (the
    release's own link, its relative target rewritten for the bucket's layout)."""

    key: str
    target: str
    target_key: str  # what it points at, as a key


def _link(keymap: KeyMap, path: str, link_target: str | None, kind: str | None) -> Link | None:
    """The local form of the release's link at ``path``, or None when it is not recreated:
    links that point outside the release or nowhere, and absolute ones (the release's root
    is not known here) are not; nor those whose target climbs above the release."""
    if kind not in ("file", "dir") or not link_target or link_target.startswith("/"):
        return None
    pointed = posixpath.normpath(posixpath.join(posixpath.dirname(path), link_target))
    if pointed == ".." or pointed.startswith("../") or pointed == ".":
        return None
    key, target_key = keymap.key(path), keymap.key(pointed)
    return Link(key, posixpath.relpath(target_key, posixpath.dirname(key)), target_key)


def _refuse_beneath_links(plan: _Plan) -> None:
    """Files and directories whose path goes through one of the release's links are left
    out (a real release has none: its crawl never descends a link), so that nothing is
    ever written through a link this download makes, which may lead out of DIR."""
    links = {link.key for link in plan.links}
    if not links:
        return

    def beneath(key: str) -> bool:
        parent = posixpath.dirname(key)
        while parent:
            if parent in links:
                return True
            parent = posixpath.dirname(parent)
        return False

    refused = [w.key for w in plan.wanted if beneath(w.key)]
    plan.wanted = [w for w in plan.wanted if not beneath(w.key)]
    plan.dirs = [d for d in plan.dirs if not beneath(d)]
    plan.refused.extend(refused)


def _settle_links(plan: _Plan, candidates: list[tuple[Link, Wanted | None]]) -> None:
    """A link is recreated only when what it points at is downloaded too (a file, a
    directory holding some, or another link that is); else a link to a file is fetched as
    its copy, as the bucket holds it, and a link to a directory is left out."""
    have = {w.key for w in plan.wanted} | set(plan.dirs)
    for key in list(have):  # and every directory above them
        parent = posixpath.dirname(key)
        while parent and parent not in have:
            have.add(parent)
            parent = posixpath.dirname(parent)
    links = {link.key: (link, copy) for link, copy in candidates}

    def present(key: str, depth: int = 0) -> bool:
        """Whether ``key`` will be there: downloaded, or a link made or fetched as a copy."""
        if key in have:
            return True
        entry = links.get(key)
        if entry is None or depth > 40:  # 40: the kernel's own limit on a chain of links
            return False
        return present(entry[0].target_key, depth + 1) or entry[1] is not None

    for link, copy in candidates:
        if present(link.target_key):
            plan.links.append(link)
        elif copy is not None:
            plan.wanted.append(copy)


def _matches(relative: str, include: tuple[str, ...]) -> bool:
    return not include or any(fnmatch.fnmatchcase(relative, g) for g in include)


def _get_bytes(client: Any, bucket: str, key: str) -> tuple[bytes, dict] | None:
    """A small object's bytes and its response, or None when there is no such key."""
    from botocore import exceptions as bx

    try:
        response = _retrying(lambda: client.get_object(Bucket=bucket, Key=key))
        return response["Body"].read(), response
    except bx.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404", "NotFound"):
            return None
        raise bucket_error(client, bucket, exc) from None
    except bx.BotoCoreError as exc:
        raise bucket_error(client, bucket, exc) from None


def _published(client: Any, bucket: str, release: str, spool: Path) -> Path | None:
    """The release's published manifest, fetched to ``spool`` and checked against the
    SHA-256 of its summary; None when the release has none."""
    import hashlib

    tsv_key, json_key = manifest_keys_for(release)
    got = _get_bytes(client, bucket, json_key)
    if got is None:
        return None
    try:
        summary = json.loads(got[0])
        expected = summary["manifest"]["sha256"]
        known = summary.get("format") == FORMAT and summary.get("version") == VERSION
    except (ValueError, KeyError, TypeError):
        known, expected = False, None
    if not known:
        raise RemoteError(f"s3://{bucket}/{json_key} is not a desimirror manifest (version 1)")
    body = _get_bytes(client, bucket, tsv_key)
    if body is None:
        raise RemoteError(f"s3://{bucket}/{json_key} names {tsv_key}, which is missing")
    actual = hashlib.sha256(body[0]).hexdigest()
    if actual != expected:
        raise RemoteError(
            f"s3://{bucket}/{tsv_key} has SHA-256 {actual}, its summary says {expected}: "
            "the published manifest is damaged; nothing was downloaded"
        )
    spool.write_bytes(body[0])
    (spool.parent / "manifest.json").write_bytes(got[0])
    return spool


def _plan_from_manifest(path: Path, subdir: str, include: tuple[str, ...]) -> _Plan:
    """The manifest's files under ``subdir`` that match ``include``; a manifest that
    cannot be read is one line (exit 4), as the store's other failures are."""
    try:
        return _manifest_plan(path, subdir, include)
    except (ValueError, EOFError, OSError) as exc:  # gzip, UTF-8 or the format itself
        raise RemoteError(f"the published manifest cannot be read: {exc}") from None


def _manifest_plan(path: Path, subdir: str, include: tuple[str, ...]) -> _Plan:
    with open(path, "rb") as stream:
        header, entries = read_manifest(stream)
        release = header.get("prefix", "")
        rules = [r for r in header.get("remap", "").split("\t") if r]
        keymap = KeyMap.build(release, rules)
        plan = _Plan([], [], [])
        candidates: list[tuple[Link, Wanted | None]] = []
        for entry in entries:
            path_in_release = entry.path
            if subdir and not (path_in_release + "/").startswith(subdir + "/"):
                continue
            relative = path_in_release[len(subdir) + 1 :] if subdir else path_in_release
            if not _matches(relative, include) and not (entry.type == "d" and not include):
                continue
            copy = None
            if entry.size is not None and entry.key:
                sha = entry.sha256 if is_hex_sha256(entry.sha256) else None
                copy = Wanted(entry.key, entry.size, sha, None, entry.mtime)
            if entry.type == "l":
                link = _link(keymap, path_in_release, entry.link_target, entry.link_kind)
                if link is not None:
                    candidates.append((link, copy))
                    continue
                plan.links_skipped += copy is None
            if copy is not None:
                plan.wanted.append(copy)
            elif entry.type == "d" and not include:
                plan.dirs.append(keymap.key(path_in_release))
    _settle_links(plan, candidates)
    _refuse_beneath_links(plan)
    plan.meta = [
        (key, (path if key.endswith(".gz") else path.parent / "manifest.json").read_bytes())
        for key in manifest_keys_for(release)
    ]
    if header.get("complete") == "no":
        plan.warnings.append(
            "the published manifest says the mirror was incomplete when it was written: "
            "files not uploaded then are not downloaded"
        )
    return plan


def _plan_from_listing(
    client: Any, bucket: str, prefix: str, include: tuple[str, ...], workers: int
) -> _Plan:
    """Every object under ``prefix/``, with the release's ``*.sha256sum`` claims as
    references (each listing is read once; it is downloaded too when it is wanted)."""
    listed: list[tuple[str, int, str]] = []
    listings: list[str] = []
    for key, size, etag in list_tree(client, bucket, prefix + "/", workers=workers):
        if key.endswith("/"):
            continue  # a "directory marker" some tools write: not a file
        if key.endswith(SUFFIX):
            listings.append(key)
        if _matches(key[len(prefix) + 1 :], include):
            listed.append((key, size, etag))
    wanted_dirs = {posixpath.dirname(key) for key, _, _ in listed}
    claims: dict[str, str] = {}
    for key in listings:
        directory = posixpath.dirname(key)
        if directory in wanted_dirs:
            got = _get_bytes(client, bucket, key)
            if got is not None:
                claims.update(parse_sha256sum(got[0], directory).claims)
    wanted = [Wanted(k, s, claims.get(k), e or None, None) for k, s, e in listed]
    return _Plan(wanted, [], [])


# -- proving bytes -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Reference:
    """What an object's bytes must hash to, and the proof's name when they do."""

    sha256: str | None = None  # hex, whole file
    etag: str | None = None  # single-part MD5, or multipart "hex-N"
    composite: str | None = None  # "base64-N"
    part_sizes: tuple[int, ...] = ()  # for the multipart ETag or the composite
    kind: str = ""

    @property
    def part_size(self) -> int:
        return self.part_sizes[0] if self.part_sizes else 1 << 62

    @property
    def needs_md5(self) -> bool:
        return self.sha256 is None and self.composite is None

    def proves(self, digests: FileDigests) -> bool:
        if self.sha256 is not None:
            return digests.sha256 == self.sha256
        if self.composite is not None:
            return same_composite(digests.composite or "", self.composite)
        return self.etag is not None and digests.etag == self.etag

    def describe(self) -> str:
        return self.sha256 or self.etag or self.composite or "nothing"


def _reference(w: Wanted, response: dict | None, part_size: Callable[[], int | None]) -> _Reference:
    """The strongest reference there is for ``w`` (module docstring), ``response`` being
    the object's GET or HEAD answer where there is one."""
    if w.sha256:
        return _Reference(sha256=w.sha256, kind="sha256")
    checksum = (response or {}).get("ChecksumSHA256")
    etag = strip_etag((response or {}).get("ETag")) or w.etag or ""
    if checksum and hex_of_b64(checksum):
        return _Reference(sha256=hex_of_b64(checksum), kind="checksum")
    multipart = "-" in etag or (checksum and "-" in checksum)
    sizes: tuple[int, ...] = ()
    if multipart:
        first = part_size()
        sizes = (first,) if first else tuple(guess_part_sizes(w.size, etag))
    if checksum and multipart and sizes:
        return _Reference(composite=checksum, part_sizes=sizes, kind="composite")
    if etag and "-" not in etag and len(etag) == 32:
        return _Reference(etag=etag, kind="etag")
    if etag and sizes:
        return _Reference(etag=etag, part_sizes=sizes, kind="multipart-etag")
    return _Reference(kind="")


def _prove_file(path: Path, ref: _Reference) -> bool:
    """Whether the file at ``path`` is what ``ref`` says, trying each possible part size."""
    for size in ref.part_sizes or (ref.part_size,):
        with open(path, "rb", buffering=0) as stream:
            if ref.proves(hash_stream(stream, size, md5=ref.needs_md5)):  # type: ignore[arg-type]
                return True
    return False


class _Tee(io.RawIOBase):
    """Reads the object's body and writes every byte it hands out to ``out``, so that
    :func:`hash_stream` hashes exactly the bytes written, in one pass."""

    def __init__(self, body: Any, out: Any, stop: threading.Event) -> None:
        super().__init__()
        self._body, self._out, self._stop = body, out, stop

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._stop.is_set():
            raise _Stopped()
        data = self._body.read(min(size, PIECE) if size and size > 0 else PIECE)
        self._out.write(data)
        return data


# -- fetching one object -----------------------------------------------------------------


@dataclass(frozen=True)
class _Done:
    key: str
    size: int
    mtime_ns: int
    reference: str
    proof: str


def _mtime_ns(w: Wanted, response: dict) -> int:
    if w.mtime is not None:
        return w.mtime * 1_000_000_000
    modified = response.get("LastModified")
    if isinstance(modified, dt.datetime):
        return int(modified.timestamp()) * 1_000_000_000
    return time.time_ns()


def _first_part_size(client: Any, bucket: str, key: str) -> int | None:
    """The size of part 1 of a multipart object (its part size), where the store says."""
    try:
        head = client.head_object(Bucket=bucket, Key=key, PartNumber=1)
    except Exception:
        return None
    if int(head.get("PartsCount") or 0) < 2:
        return None
    return int(head["ContentLength"])


_made_dirs: set[Path] = set()


def _ensure_dir(path: Path) -> None:
    """``mkdir -p`` once per directory and run, not once per file (a syscall each)."""
    if path not in _made_dirs:
        path.mkdir(parents=True, exist_ok=True)
        _made_dirs.add(path)


def _fetch(
    client: Any,
    bucket: str,
    w: Wanted,
    final: Path,
    stop: threading.Event,
    ranges: _Ranges | None = None,
    crt: Any = None,
) -> _Done:
    """Fetch ``w`` into its part file, prove it, then rename it into place."""
    _ensure_dir(final.parent)
    if ranges is not None and w.size > RANGED_ABOVE:
        return _fetch_large(client, bucket, w, final, stop, ranges)
    if crt is not None and w.size <= IN_MEMORY_MAX:
        return _fetch_in_memory(client, crt, bucket, w, final, stop)
    part = part_path(final)
    # the object's own checksum is asked for only where nothing else is known of it
    mode = {} if w.sha256 else {"ChecksumMode": "ENABLED"}
    response = client.get_object(Bucket=bucket, Key=w.key, **mode)
    body = response["Body"]
    ref = _reference(w, response, lambda: _first_part_size(client, bucket, w.key))
    if not ref.kind:
        body.close()
        raise _Refused(f"s3://{bucket}/{w.key} has no checksum or MD5 ETag to prove it by")
    with _removed_on_failure(part):
        with open(part, "wb") as out, contextlib.closing(body):
            tee = _Tee(body, out, stop)
            digests = hash_stream(tee, ref.part_size, md5=ref.needs_md5)  # type: ignore[arg-type]
        return _into_place(part, final, bucket, w, response, ref, digests)


def _fetch_in_memory(
    client: Any, crt: Any, bucket: str, w: Wanted, final: Path, stop: threading.Event
) -> _Done:
    """A small object through the runtime, whole into one buffer, hashed from it (no
    copy), written to its part file in one call, then proven and renamed as any other."""
    if stop.is_set():
        raise _Stopped()
    mode = [] if w.sha256 else [("x-amz-checksum-mode", "ENABLED")]
    headers, data = crt.get(w.key, mode, w.size)
    response = _response_of(headers)
    ref = _reference(w, response, lambda: _first_part_size(client, bucket, w.key))
    if not ref.kind:
        raise _Refused(f"s3://{bucket}/{w.key} has no checksum or MD5 ETag to prove it by")
    digests = hash_stream(_Slices(data), ref.part_size, md5=ref.needs_md5)  # type: ignore[arg-type]
    part = part_path(final)
    with _removed_on_failure(part):
        with open(part, "wb", buffering=0) as out:
            view = memoryview(data)
            while view:
                view = view[out.write(view) :]
        return _into_place(part, final, bucket, w, response, ref, digests)


class _Slices:
    """Bytes in memory read as a stream of views into them: hashed without a copy."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._view, self._at = memoryview(data), 0

    def read(self, size: int = -1) -> memoryview:
        end = len(self._view) if size is None or size < 0 else self._at + size
        piece = self._view[self._at : end]
        self._at += len(piece)
        return piece


def _response_of(headers: dict[str, str]) -> dict[str, Any]:
    """The fields of a GET's response headers that botocore would have parsed for us."""
    response: dict[str, Any] = {"ETag": headers.get("etag", "")}
    if "content-length" in headers:
        response["ContentLength"] = int(headers["content-length"])
    if "x-amz-checksum-sha256" in headers:
        response["ChecksumSHA256"] = headers["x-amz-checksum-sha256"]
    with contextlib.suppress(TypeError, ValueError):
        response["LastModified"] = email.utils.parsedate_to_datetime(headers.get("last-modified"))
    return response


def _fetch_large(
    client: Any, bucket: str, w: Wanted, final: Path, stop: threading.Event, ranges: _Ranges
) -> _Done:
    """A large object: its ranges fetched in parallel, each pinned to the ETag of a HEAD
    and written at its offset as it streams in; the file's thread hashes each range, in
    order, from the page cache as soon as it is written, so hashing overlaps the transfer
    and the file is proven before its rename (:class:`_Ranges`)."""
    part = part_path(final)
    mode = {} if w.sha256 else {"ChecksumMode": "ENABLED"}
    response = client.head_object(Bucket=bucket, Key=w.key, **mode)
    ref = _reference(w, response, lambda: _first_part_size(client, bucket, w.key))
    if not ref.kind:
        raise _Refused(f"s3://{bucket}/{w.key} has no checksum or MD5 ETag to prove it by")
    if int(response.get("ContentLength", w.size)) != w.size:
        raise OSError(f"the object has {response['ContentLength']:,} bytes, not {w.size:,}")
    etag = strip_etag(response.get("ETag"))
    with _removed_on_failure(part):
        with open(part, "w+b") as out:  # read back, to be hashed
            _reserve(out, w.size)
            body = _RangedFile(ranges, client, bucket, w.key, w.size, etag, out.fileno(), stop)
            with contextlib.closing(body):
                digests = hash_stream(body, ref.part_size, md5=ref.needs_md5)  # type: ignore[arg-type]
        return _into_place(part, final, bucket, w, response, ref, digests)


def _reserve(out: Any, size: int) -> None:
    """Allocate a large file's blocks at once (fewer, larger extents; a full disk fails
    here, before the transfer); where the filesystem cannot, it is written as it comes."""
    if hasattr(os, "posix_fallocate"):
        with contextlib.suppress(OSError):
            os.posix_fallocate(out.fileno(), 0, size)


class _Ranges:
    """The threads that fetch the ranges of large objects, shared by all of them, each
    with its own small buffer, reused: a range streams through it into the file.

    Measured on the benchmark's VM: the same transfers cost about half the CPU when each
    range streams through a 256 KiB buffer (socket → buffer → page cache) as when it
    arrives whole in memory (8 MiB bytes objects, then one write, then the hash): copies
    of buffers that have left the CPU's caches, and fresh memory for each, are what cost.
    """

    def __init__(self, threads: int = RANGE_THREADS) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="desimirror-range")
        self._local = threading.local()

    def buffer(self) -> bytearray:
        buf = getattr(self._local, "buffer", None)
        if buf is None:
            buf = self._local.buffer = bytearray(PIECE)
        return buf

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _RangedFile(io.RawIOBase):
    """A large object's bytes as a stream to hash: ``WINDOW`` ranges in flight ahead of
    the reader, each written into the part file by the thread that fetched it; the reader
    reads each range back from the file once its range is complete, in order."""

    def __init__(
        self,
        ranges: _Ranges,
        client: Any,
        bucket: str,
        key: str,
        size: int,
        etag: str | None,
        fd: int,
        stop: threading.Event,
    ) -> None:
        super().__init__()
        self._ranges, self._client, self._bucket, self._key = ranges, client, bucket, key
        self._extra = {"IfMatch": f'"{etag}"'} if etag else {}
        self._size, self._fd, self._stop = size, fd, stop
        self._starts = iter(range(0, size, RANGE_SIZE))
        self._window: deque[Future] = deque()
        self._ready = 0  # bytes from the start written and safe to read back
        self._offset = 0  # bytes read back (hashed)

    def readable(self) -> bool:
        return True

    def _range(self, start: int) -> int:
        """Fetch one range into the file (retried as a whole); its end offset."""
        end = min(start + RANGE_SIZE, self._size)

        def once() -> int:
            if self._stop.is_set():
                raise _Stopped()
            r = self._client.get_object(
                Bucket=self._bucket, Key=self._key, Range=f"bytes={start}-{end - 1}", **self._extra
            )
            at = _stream_into(r["Body"], self._fd, start, self._ranges.buffer(), self._stop)
            if at != end:
                raise OSError(f"got {at - start:,} bytes of a range: the transfer was cut short")
            return end

        return _retrying(once)

    def _top_up(self) -> None:
        while len(self._window) < WINDOW:
            start = next(self._starts, None)
            if start is None:
                return
            self._window.append(self._ranges.pool.submit(self._range, start))

    def read(self, size: int = -1) -> bytes:
        if self._stop.is_set():
            raise _Stopped()
        if self._offset >= self._ready:
            self._top_up()
            if not self._window:
                return b""
            self._ready = self._window.popleft().result()
            self._top_up()
        n = self._ready - self._offset if size is None or size < 0 else size
        data = os.pread(self._fd, min(n, PIECE, self._ready - self._offset), self._offset)
        if not data:
            raise OSError("the part file is shorter than what was written to it")
        self._offset += len(data)
        return data

    def close(self) -> None:
        while self._window:
            future = self._window.popleft()
            future.cancel()
            with contextlib.suppress(Exception):
                future.exception()  # wait for one already running: it writes to our fd
        super().close()


def _stream_into(body: Any, fd: int, offset: int, buffer: bytearray, stop: threading.Event) -> int:
    """Copy a response body into the file at ``offset`` through ``buffer``; the end offset."""
    raw = getattr(body, "_raw_stream", body)  # urllib3's response: readinto, no copies
    view = memoryview(buffer)
    with contextlib.closing(body):
        while n := raw.readinto(buffer):
            if stop.is_set():
                raise _Stopped()
            chunk = view[:n]
            while chunk:
                written = os.pwrite(fd, chunk, offset)
                chunk, offset = chunk[written:], offset + written
    return offset


@contextlib.contextmanager
def _removed_on_failure(part: Path) -> Iterator[None]:
    """Whatever goes wrong (a refusal, a cut transfer, an interruption), no part file
    is left behind."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise


def _into_place(
    part: Path,
    final: Path,
    bucket: str,
    w: Wanted,
    response: dict,
    ref: _Reference,
    digests: FileDigests,
) -> _Done:
    """The part file, complete and proven by ``digests``, given its mtime and renamed
    over its final name; else refused (``_Refused``) or cut short (``OSError``)."""
    got = digests.size
    if got != w.size or int(response.get("ContentLength", got)) != got:
        raise OSError(f"got {got:,} bytes of {w.size:,}: the transfer was cut short")
    if not ref.proves(digests) and not (len(ref.part_sizes) > 1 and _prove_file(part, ref)):
        raise _Refused(_refusal(bucket, w, ref, digests))
    mtime_ns = _mtime_ns(w, response)
    os.utime(part, ns=(mtime_ns, mtime_ns))
    os.replace(part, final)
    # recorded by what is known of the object before any GET, so a resume can compare
    return _Done(w.key, w.size, mtime_ns, w.sha256 or w.etag or ref.describe(), ref.kind)


def _refusal(bucket: str, w: Wanted, ref: _Reference, digests: FileDigests) -> str:
    where = f"s3://{bucket}/{w.key}"
    if ref.kind == "sha256":
        return f"{where}: {corrupt_text(digests.sha256, ref.sha256)}; refused, not written"
    return f"{where}: its bytes do not match its own {ref.kind} {ref.describe()}: refused"


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, _Refused | _Stopped | UsageError):
        return False
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError):
        return "cut short" in str(exc)
    return describe_error(exc)[1]


def _retrying(call: Callable[[], Any]) -> Any:
    return retry_call(call, attempts=ATTEMPTS, base=BACKOFF_SECONDS, retry_on=_transient)


def _explain(exc: BaseException) -> str:
    if isinstance(exc, _Refused):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"local: {exc.strerror or exc}: {exc.filename}"
    return describe_error(exc)[0]


# -- the stage ---------------------------------------------------------------------------


def download(options: DownloadOptions, progress: Progress | None = None) -> DownloadReport:
    """Download ``options.prefix`` into ``options.dest``; see the module docstring.

    Raises :class:`IncompleteError` (exit 5) with the report when some files failed.
    """
    progress = progress or NullProgress()
    t = options.target
    report = DownloadReport(
        source=f"s3://{t.bucket}/{options.prefix}", dest=str(options.dest), dry_run=options.dry_run
    )
    dest = options.dest
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a directory")
    client = make_client(
        t, max_pool_connections=options.workers + 4, validate_response_checksums=False
    )
    try:
        check_bucket(client, t.bucket)
    except RemoteError as exc:
        if t.no_sign_request or "no AWS credentials" not in str(exc):
            raise
        raise RemoteError(f"{exc}, or --no-sign-request for a public bucket") from None
    lock = None
    if not options.dry_run:
        _make_dir(dest / RECORD_DIR)
        lock = writelock.acquire(dest / RECORD_DIR / RECORD_NAME, "download")
    try:
        return _run(client, options, report, progress)
    finally:
        if lock is not None:
            lock.release()


def _runtime_client(options: DownloadOptions) -> Any:
    """The AWS Common Runtime's client for small objects, or None where it is not there."""
    try:
        from desimirror.storage.transfer.crt import crt_client
    except ImportError:  # pragma: no cover (awscrt is a dependency)
        return None
    return crt_client(options.target, options.workers + 4, GET_TIMEOUT)


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror or exc}") from None


def _run(
    client: Any, options: DownloadOptions, report: DownloadReport, progress: Progress
) -> DownloadReport:
    t0 = time.monotonic()
    t = options.target
    _made_dirs.clear()  # what an earlier run in this process made may be gone
    release, _, subdir = options.prefix.partition("/")
    progress.start("download")
    progress.phase("reading the release manifest")
    with tempfile.TemporaryDirectory(prefix="desimirror-download-") as tmp:
        spooled = _published(client, t.bucket, release, Path(tmp) / "manifest.tsv.gz")
        if spooled is not None:
            report.reference = "manifest"
            plan = _plan_from_manifest(spooled, subdir, options.include)
        else:
            report.reference = "listing"
            progress.phase("listing the bucket")
            plan = _plan_from_listing(
                client, t.bucket, options.prefix, options.include, options.workers
            )
    if not plan.wanted:
        raise UsageError(
            f"nothing to download: s3://{t.bucket}/{options.prefix}/ holds no "
            + ("file matching --include" if options.include else "objects")
        )
    report.warnings.extend(plan.warnings)
    report.links, report.links_not_recreated = len(plan.links), plan.links_skipped
    for key in plan.refused:
        _failed(report, key, f"{key} lies beneath a symlink of the release: not written")
    report.files = len(plan.wanted)
    report.bytes = sum(w.size for w in plan.wanted)
    record = Record(options.dest)
    try:
        progress.phase("checking local files")
        todo = _check_local(options.dest, plan.wanted, record, report, options.dry_run)
        report.files_to_fetch = len(todo)
        report.bytes_to_fetch = sum(w.size for w in todo)
        if not options.dry_run:
            _create_dirs(options.dest, plan, report)
            progress.start("download", report.files_to_fetch, report.bytes_to_fetch)
            progress.phase("fetching")
            crt = _runtime_client(options) if todo else None
            _fetch_all(client, crt, t.bucket, options, todo, record, report, progress)
            _make_links(options.dest, plan.links, report)
    finally:
        record.close()
        progress.close()
    report.seconds = time.monotonic() - t0
    report.rate = report.bytes_fetched / report.seconds if report.seconds > 0 else 0.0
    if report.files_failed:
        raise IncompleteError(
            f"{report.files_failed:,} of {report.files:,} files could not be downloaded "
            f"and proven (first: {report.failures[0]['error']}); run the same command to "
            "try them again",
            report=report.as_dict(),
        )
    return report


def _check_local(
    dest: Path, wanted: list[Wanted], record: Record, report: DownloadReport, dry_run: bool
) -> list[Wanted]:
    """What must be fetched: everything but the files the record vouches for and those
    at their final name that prove by a hash in place (module docstring)."""
    todo: list[Wanted] = []
    for w in wanted:
        try:
            final = local_path(dest, w.key)
        except _Refused as exc:
            _failed(report, w.key, str(exc))
            continue
        try:
            st = final.lstat()
        except OSError:
            todo.append(w)
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size != w.size:
            todo.append(w)
        elif record.vouches(w.key, w.sha256 or w.etag, st):
            report.files_kept += 1
            report.bytes_kept += w.size
        elif not dry_run and _proven_in_place(final, w, st, record):
            report.files_proven_in_place += 1
            report.files_kept += 1
            report.bytes_kept += w.size
        else:
            todo.append(w)
    return todo


def _proven_in_place(final: Path, w: Wanted, st: os.stat_result, record: Record) -> bool:
    ref = _reference(w, None, lambda: None)
    if not ref.kind:
        return False
    try:
        if not _prove_file(final, ref):
            return False
    except OSError:
        return False
    record.add(w.key, st.st_size, st.st_mtime_ns, w.sha256 or w.etag or "", ref.kind)
    return True


def _create_dirs(dest: Path, plan: _Plan, report: DownloadReport) -> None:
    """The manifest's directories (empty ones too: S3 cannot hold them) and the manifest
    itself, beside the release as in the bucket, so the copy can be checked offline."""
    for key in plan.dirs:
        with contextlib.suppress(_Refused, OSError):
            path = local_path(dest, key)
            if not path.is_dir():
                _ensure_dir(path)
                report.dirs_created += 1
    for key, data in plan.meta:
        final = local_path(dest, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        part = part_path(final)
        part.write_bytes(data)
        os.replace(part, final)


def _make_links(dest: Path, links: list[Link], report: DownloadReport) -> None:
    """The release's links, after its files (nothing is ever written through one made
    here): each made under a temporary name and renamed over whatever is in its place (a
    copy an earlier download made), or kept when it is already the same link."""
    for link in links:
        try:
            final = local_path(dest, link.key)
            with contextlib.suppress(OSError):
                if os.readlink(final) == link.target:
                    continue
            _ensure_dir(final.parent)
            part = part_path(final)
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            os.symlink(link.target, part)
            os.replace(part, final)
            report.links_created += 1
        except (_Refused, OSError) as exc:
            _failed(report, link.key, _explain(exc))


def _fetch_all(
    client: Any,
    crt: Any,
    bucket: str,
    options: DownloadOptions,
    todo: list[Wanted],
    record: Record,
    report: DownloadReport,
    progress: Progress,
) -> None:
    """Fetch ``todo`` with ``workers`` transfers in flight; only this thread records."""
    stop = threading.Event()
    pending = iter(todo)
    in_flight: dict[Future, Wanted] = {}

    def one(w: Wanted) -> _Done:
        if stop.is_set():
            raise _Stopped()
        final = local_path(options.dest, w.key)
        return _retrying(lambda: _fetch(client, bucket, w, final, stop, ranges, crt))

    ranges = _Ranges()
    finished: deque[Future] = deque()  # appended by each transfer's thread as it ends
    with ThreadPoolExecutor(options.workers, thread_name_prefix="desimirror-get") as pool:
        try:
            _top_up(pool, one, pending, in_flight, 2 * options.workers, finished.append)
            delay = POLL_MIN
            while in_flight:
                # polled, not waited for: a signal (Ctrl-C, SIGTERM) raised inside a
                # Condition.wait can break its lock and turn into a RuntimeError; what
                # ended is in ``finished``, so a poll does not look at every transfer
                if not finished:
                    time.sleep(delay)
                    delay = min(2 * delay, POLL_MAX)
                    continue
                delay = POLL_MIN
                while finished:
                    future = finished.popleft()
                    _settle(future, in_flight.pop(future), record, report, progress)
                _top_up(pool, one, pending, in_flight, 2 * options.workers, finished.append)
        finally:
            stop.set()  # an interruption: transfers in flight give up and remove their part
            ranges.close()


def _top_up(
    pool: ThreadPoolExecutor,
    one: Callable[[Wanted], _Done],
    pending: Iterator[Wanted],
    in_flight: dict[Future, Wanted],
    limit: int,
    on_done: Callable[[Future], None],
) -> None:
    while len(in_flight) < limit:
        w = next(pending, None)
        if w is None:
            return
        future = pool.submit(one, w)
        in_flight[future] = w
        future.add_done_callback(on_done)


def _settle(
    future: Future, w: Wanted, record: Record, report: DownloadReport, progress: Progress
) -> None:
    exc = future.exception()
    if exc is not None:
        _failed(report, w.key, _explain(exc))
        return
    done: _Done = future.result()
    record.add(done.key, done.size, done.mtime_ns, done.reference, done.proof)
    report.files_fetched += 1
    report.bytes_fetched += done.size
    report.proofs[done.proof] = report.proofs.get(done.proof, 0) + 1
    progress.advance(files=1, nbytes=done.size)


def _failed(report: DownloadReport, key: str, error: str) -> None:
    report.files_failed += 1
    if len(report.failures) < 100:
        report.failures.append({"key": key, "error": error})


def includes(globs: Iterable[str]) -> tuple[str, ...]:
    """``--include`` patterns, checked: a pattern is matched against the path of a file
    relative to the downloaded prefix (``*`` crosses ``/``, as in ``aws s3 sync``)."""
    out = tuple(g.strip().lstrip("/") for g in globs)
    if any(not g for g in out):
        raise UsageError("--include needs a pattern, e.g. --include 'spectro/redux/*/tiles-*'")
    return out
