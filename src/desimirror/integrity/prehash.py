"""Hash files in a thread pool, ahead of the sender, when the sender cannot hash them itself.

s5cmd reads the files it uploads itself, so its bytes cannot be hashed on the way. The
uploader hashes each file here instead (SHA-256 against the published checksum, and the
MD5-based ETag s5cmd's object will get), one chunk of files ahead of the s5cmd run that
sends them, so the extra read overlaps with the upload of the previous chunk. The same
pool hashes files whose existing objects are to be adopted (no upload at all).

This is a second read of each file, the price of the s5cmd backend's speed: the native
backend hashes while it sends and needs none. hashlib releases the GIL on large buffers,
so the threads hash in parallel.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from desimirror.integrity.checksums import CHUNK, FileDigests, hash_stream, open_source
from desimirror.integrity.sourcetree import Signature, SourceTree
from desimirror.state.manifest import Entry


class FileChanged(Exception):
    """The file is not the one the crawl saw (size or mtime differ)."""


class Prehasher:
    """A cache of futures of :class:`FileDigests`, one per (file state, part size)."""

    def __init__(self, threads: int = 4, tree: SourceTree | None = None) -> None:
        #: Files are opened beneath this root and checked against the crawl (see
        #: :mod:`desimirror.integrity.sourcetree`); without one, by path (tests of this
        #: class alone).
        self.tree = tree
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="desimirror-hash")
        self._futures: dict[tuple, Future] = {}
        self._lock = threading.Lock()
        self.files = 0
        self.bytes = 0
        self.seconds = 0.0  # summed over threads

    def submit(self, source: str, entry: Entry, part_size: int) -> Future:
        """Start hashing ``source`` (the file of ``entry``) unless it is already under way."""
        key = (entry.path, entry.size, entry.mtime_ns, part_size)
        with self._lock:
            future = self._futures.get(key)
            if future is None:
                future = self._pool.submit(self._hash, source, entry, part_size)
                self._futures[key] = future
            return future

    def digests(self, source: str, entry: Entry, part_size: int) -> FileDigests:
        """The digests (waiting for them); raises :class:`FileChanged`,
        :class:`~desimirror.integrity.sourcetree.SourceRefused` or ``OSError``."""
        return self.submit(source, entry, part_size).result()

    def _hash(self, source: str, entry: Entry, part_size: int) -> FileDigests:
        started = time.monotonic()
        with self._open(source, entry) as stream:
            if self.tree is None:  # (opened beneath a tree, it was checked when opened)
                _same(os.fstat(stream.fileno()), entry)
            digests = hash_stream(stream, part_size)
            if self.tree is None:
                _same(os.fstat(stream.fileno()), entry)
            else:  # rewritten while read, even with its mtime set back
                self.tree.check_fd(stream.fileno(), Signature.of_entry(entry))
        if digests.size != entry.size:
            raise FileChanged(f"read {digests.size} bytes, expected {entry.size}")
        with self._lock:
            self.files += 1
            self.bytes += digests.size
            self.seconds += time.monotonic() - started
        return digests

    def _open(self, source: str, entry: Entry):  # type: ignore[no-untyped-def]
        if self.tree is None:
            return open_source(source)
        return os.fdopen(self.tree.open_entry(entry), "rb", buffering=CHUNK)

    def forget(self, paths: set[str] | None = None) -> None:
        """Drop cached results of ``paths`` (all if None): at the end of a batch, so that
        memory stays bounded while the next batch's hashes, already under way, are kept."""
        with self._lock:
            for key in [k for k in self._futures if paths is None or k[0] in paths]:
                self._futures.pop(key).cancel()

    def close(self) -> None:
        self.forget()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _same(st: os.stat_result, entry: Entry) -> None:
    if st.st_size != entry.size or (
        entry.mtime_ns is not None and st.st_mtime_ns != entry.mtime_ns
    ):
        raise FileChanged("size or mtime changed since the crawl; run 'desimirror crawl' again")
