"""The crawl's rows into the state db: listings batched in the crawling process, written
by a forked child with its own connection and its own GIL (or by a thread where the OS
cannot fork), with the WAL checkpointed in the background, and the directory sizes summed
as the listings arrive. An import of find.json hands its rows to the same writer
(:meth:`RowWriter.put`), so that its tokenizer and SQLite run on two cores."""

from __future__ import annotations

import contextlib
import gc
import marshal
import os
import queue
import select
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

from desimirror import processes
from desimirror.errors import StateError
from desimirror.pipeline.crawl.summary import ERROR_EXAMPLES, CrawlSummary
from desimirror.pipeline.crawl.walk import DirListing, Group, Row, RowBatch
from desimirror.state.manifest import Manifest, roll_up, wal_checkpointer

try:
    import fcntl
except ImportError:  # not POSIX: no fork either, the thread writer is used
    fcntl = None  # type: ignore[assignment]

#: Rows per SQLite transaction: a concurrent ``upload`` or ``status`` gets the write lock
#: between them, and the rows in memory stay a few batches.
CHUNK_ROWS = 20000
#: Commit at least this often (seconds) even on a slow filesystem, so the db shows progress.
FLUSH_SECONDS = 2.0
#: Batches of rows waiting for the writer at most (the crawl waits beyond that).
WRITE_QUEUE = 4
#: How often the WAL is copied into the database in the background during a crawl.
CHECKPOINT_SECONDS = 0.5
#: How often the crawl looks whether its writer process is still alive, and how long it
#: waits for it to exit once it has answered (or once the crawl has failed).
WRITER_POLL_SECONDS = 1.0
WRITER_EXIT_SECONDS = 30.0
#: The pipe buffer asked for between the crawl and its writer process (Linux).
PIPE_BYTES = 1 << 20


def expand(groups: list[Group]) -> list[Row]:
    """Manifest rows from a listing's groups: the path and parent put back on each item.
    Items of (name, kind, size) alone (an import without its tree) make rows that stop
    after the size (see :meth:`Manifest.put_crawl_rows`)."""
    rows: list[Row] = []
    for rel, items in groups:
        pre = rel + "/" if rel else ""
        if items and len(items[0]) == 3:
            rows += [(pre + n, rel, n, k, s) for n, k, s in items]  # type: ignore[misc]
        else:
            rows += [
                (pre + n, rel, n, k, s, m, t, lk, c, i, d) for n, k, s, m, t, lk, c, i, d in items
            ]
    return rows


@dataclass(frozen=True)
class LoadMode:
    """How the writer loads the rows into the db.

    ``first``: the db holds no entries yet, so the parent index is built once at the end
    (:meth:`Manifest.bulk_load`). ``one_transaction``: every batch in one transaction,
    committed at the end and rolled back if the rows stop coming (a re-import, which a
    file bad half-way must leave unchanged); otherwise a transaction per batch with the
    WAL checkpointed in the background. ``pending_counts``: the directory totals of a
    batch are the tree's pending counts too (:meth:`Manifest.put_dir_totals`).
    """

    first: bool
    one_transaction: bool = False
    pending_counts: bool = False


def _write_batch(manifest: Manifest, crawl_id: int, batch: RowBatch, mode: LoadMode) -> None:
    groups, errors, totals = batch
    rows = expand(groups)
    with manifest.atomic():
        manifest.put_crawl_rows(crawl_id, rows)
        manifest.put_crawl_errors(crawl_id, errors)
        if totals:
            manifest.put_dir_totals(totals, pending=mode.pending_counts)


def _write_dir_sizes(manifest: Manifest, sizes: list[tuple[int, str]] | None) -> None:
    if sizes:
        with manifest.atomic():
            manifest.put_dir_sizes(sizes)


class WalCheckpointer:
    """Copies the WAL into the database in the background while the crawl writes.

    The writer never checkpoints during a crawl (:meth:`Manifest.bulk_load`), so without
    this the WAL would grow to the size of the whole crawl and be copied and synced in
    one go after the last row, while nothing else happens. A second connection in
    its own thread does it every :data:`CHECKPOINT_SECONDS` instead, while the tree is
    being listed; a PASSIVE checkpoint never blocks the writer, and syncs the WAL before
    copying and the database after, like any other.
    """

    def __init__(self, db: str) -> None:
        self.db = db
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="crawl-checkpoint", daemon=True)

    def __enter__(self) -> WalCheckpointer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _loop(self) -> None:
        try:
            with wal_checkpointer(self.db) as checkpoint:
                while not self.stop.wait(CHECKPOINT_SECONDS):
                    checkpoint()
        except sqlite3.Error:
            pass  # only an optimisation: the final checkpoint copies whatever is left


class _ThreadSink:
    """Writes batches through the crawl's own connection, from the sender thread.

    The fallback where the OS cannot fork. SQLite runs without the GIL, but
    ``executemany`` takes the GIL back after every row, and busy scanning threads make it
    wait for it each time (several times the cost of a row written alone).
    """

    def __init__(self, manifest: Manifest, crawl_id: int, mode: LoadMode) -> None:
        self.manifest, self.crawl_id, self.mode = manifest, crawl_id, mode
        self.stack = contextlib.ExitStack()
        self.stack.enter_context(manifest.bulk_load(drop_parent_index=mode.first))
        self.stack.enter_context(_batches_in(manifest, mode))

    def write(self, batch: RowBatch) -> None:
        _write_batch(self.manifest, self.crawl_id, batch, self.mode)

    def close(self, ok: bool, sizes: list[tuple[int, str]] | None) -> None:
        if not ok:  # the one transaction, if there is one, is rolled back
            self.stack.__exit__(_RowsStopped, _RowsStopped(), None)
            return
        with self.stack:
            _write_dir_sizes(self.manifest, sizes)


class _RowsStopped(Exception):
    """The rows stopped coming (the crawl or import failed): nothing more is written."""


def _batches_in(manifest: Manifest, mode: LoadMode) -> contextlib.AbstractContextManager:
    """The transaction the batches go into: one for all of them, or the background
    checkpoints between theirs."""
    return manifest.atomic() if mode.one_transaction else WalCheckpointer(str(manifest.path))


class _ProcessSink:
    """Writes batches in a forked child process with its own connection and its own GIL.

    A writer thread inside the crawling process waits for the GIL at every row while the
    scanning threads hold it; the child writes a row in a fraction of that time, in
    parallel with the scan (bench/CRAWL.md). Batches travel marshalled (plain tuples and
    lists: faster than pickle, and both ends are this interpreter) through a pipe,
    length-prefixed. The child builds the index once the rows are in, also if the crawl
    dies (it sees the pipe close). It is forked before the crawl starts any thread and
    leaves through ``os._exit``, never touching the parent's connection. Plain
    ``os.fork`` and pipes rather than :mod:`multiprocessing`, which imports modules
    lazily: a crawl that dropped its privileges after start-up could not load them.
    """

    def __init__(self, manifest: Manifest, crawl_id: int, mode: LoadMode) -> None:
        inbox, to_child = os.pipe()
        from_child, outbox = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.close(to_child)
                os.close(from_child)
                code = _writer_process(str(manifest.path), crawl_id, mode, inbox, outbox)
            finally:
                os._exit(code)
        os.close(inbox)
        os.close(outbox)
        self.pid: int | None = pid
        with contextlib.suppress(AttributeError, OSError):  # Linux: fewer, larger writes
            fcntl.fcntl(to_child, fcntl.F_SETPIPE_SZ, PIPE_BYTES)  # type: ignore[union-attr]
        self.out = os.fdopen(to_child, "wb")
        self.replies = os.fdopen(from_child, "rb", buffering=0)

    def write(self, batch: RowBatch) -> None:
        try:
            _send(self.out, marshal.dumps(("rows", *batch)))
        except OSError:  # the child is gone; close() says why
            self.close(ok=True, sizes=None)
            raise StateError("the crawl's writer process ended early") from None

    def close(self, ok: bool, sizes: list[tuple[int, str]] | None) -> None:
        """Tell the child that the rows are all sent and wait for it (index build
        included); raise its failure. Not ``ok`` (the crawl failed): close the pipe, give
        the child a bounded time to restore the db, then stop it."""
        if self.pid is None:
            return
        reply: bytes | None = None
        try:
            with contextlib.suppress(OSError):
                if ok:
                    _send(self.out, marshal.dumps(("end", sizes)))
                self.out.close()
            if ok:
                reply = self._reply()
            self._reap(WRITER_EXIT_SECONDS)
        finally:
            if self.pid is not None:  # still running: stop it by its PID
                processes.stop(self.pid, terminate_first=False)
                self.pid = None
            self.replies.close()
        if ok and reply != b"ok":
            detail = (reply or b"it ended without an answer").decode(errors="replace")
            raise StateError(f"writing the crawl into the state db failed: {detail}")

    def _reply(self) -> bytes | None:
        """The child's answer. Waits as long as the child lives (it may be building the
        index of millions of rows), never past its end."""
        fd = self.replies.fileno()
        while True:
            ready, _, _ = select.select([fd], [], [], WRITER_POLL_SECONDS)
            if ready:
                try:
                    return _recv(self.replies)
                except EOFError:
                    return None
            if self._reap(0):
                return None

    def _reap(self, timeout: float) -> bool:
        """True once the child has exited (and is reaped), waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.pid is not None:
            pid, _status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = None
                break
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True


def _send(out: BinaryIO, data: bytes) -> None:
    out.write(len(data).to_bytes(8, "little"))
    out.write(data)
    out.flush()


def _recv(stream: BinaryIO) -> bytes:
    size = int.from_bytes(_read_exactly(stream, 8), "little")
    return _read_exactly(stream, size)


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def _writer_process(db: str, crawl_id: int, mode: LoadMode, inbox: int, outbox: int) -> int:
    """The child's side of :class:`_ProcessSink`: batches in, ``ok`` or the error out.

    The child makes no reference cycles, so the cyclic GC (which would walk the rows of
    every batch in flight, again and again) is off: a process of its own, its own rules.
    """
    gc.disable()
    reply = b"ok"
    with os.fdopen(inbox, "rb") as source, os.fdopen(outbox, "wb") as answer:
        try:
            with (
                Manifest.open(db) as manifest,
                manifest.bulk_load(drop_parent_index=mode.first),
                _batches_in(manifest, mode),
            ):
                while True:
                    kind, *payload = marshal.loads(_recv(source))
                    if kind == "end":
                        _write_dir_sizes(manifest, payload[0])
                        break
                    _write_batch(manifest, crawl_id, (payload[0], payload[1], payload[2]), mode)
        except EOFError:  # the crawl died; rolled back if one transaction, db restored
            return 1
        except BaseException as exc:
            reply = f"{type(exc).__name__}: {exc}".encode()
        with contextlib.suppress(OSError):
            _send(answer, reply)
    return 0 if reply == b"ok" else 1


class RowWriter:
    """Collects listings in the dispatching thread and hands batches to a sink.

    The dispatching thread only moves lists and adds up tallies; a sender thread
    marshals the batches and waits on the sink, so the dispatcher never waits for
    SQLite. At most :data:`WRITE_QUEUE` batches wait; beyond that the crawl waits.
    """

    def __init__(self, sink: _ThreadSink | _ProcessSink, summary: CrawlSummary) -> None:
        self.sink = sink
        self.summary = summary
        self.groups: list[Group] = []
        self.rows = 0
        self.errors: list[tuple[str, str]] = []
        self.keep: list[str] = []  # paths whose earlier records must survive this crawl
        self.direct: dict[str, int] = {}  # directory -> bytes of the uploadables in it
        self.last_flush = time.monotonic()
        self.failure: BaseException | None = None
        self.queue: queue.Queue[RowBatch | None] = queue.Queue(WRITE_QUEUE)
        self.thread = threading.Thread(target=self._loop, name="crawl-writer", daemon=True)
        self.thread.start()

    def add(self, listing: DirListing) -> None:
        """Queue one listing's rows and errors, and add up its tallies."""
        summary = self.summary
        summary.entries += listing.entries
        summary.dirs_scanned += listing.listed
        kinds = summary.kinds
        if listing.files:
            kinds["file"] += listing.files
        if listing.dirs:
            kinds["dir"] += listing.dirs
        if listing.others:
            kinds["other"] += listing.others
        for link_kind, count in listing.link_kinds.items():
            kinds["link"] += count
            summary.link_kinds[link_kind] += count
        summary.bytes += listing.nbytes
        direct = self.direct
        for directory, nbytes in listing.dir_bytes:
            direct[directory] = direct.get(directory, 0) + nbytes
        for error in listing.errors:
            summary.errors += 1
            if len(summary.error_examples) < ERROR_EXAMPLES:
                summary.error_examples.append((error.path, error.message))
            if error.hides:
                self.keep.append(error.path)
            self.errors.append((error.path, error.message))
        self.groups += listing.groups
        self.rows += listing.entries
        if self.rows >= CHUNK_ROWS or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.failure is not None:
            raise self.failure
        if self.groups or self.errors:
            self.queue.put((self.groups, self.errors, []))
            self.groups, self.errors, self.rows = [], [], 0
        self.last_flush = time.monotonic()

    def put(
        self, groups: list[Group], errors: list[tuple[str, str]], totals: list[tuple[str, int, int]]
    ) -> None:
        """Queue a batch made by the caller, who keeps the tallies (an import, which also
        sums each directory as it leaves it: ``totals`` are (path, files, bytes) of the
        directories whose rows are written, see :meth:`Manifest.put_dir_totals`)."""
        if self.failure is not None:
            raise self.failure
        self.queue.put((groups, errors, totals))

    def close(self, *, ok: bool = True) -> None:
        """Write what is left and the directory sizes (when the crawl saw everything),
        wait for the sink, and raise its failure if ``ok`` (not while another exception
        is on its way out)."""
        try:
            if ok:
                self.flush()
        finally:
            self.queue.put(None)
            self.thread.join()
            ok = ok and self.failure is None
            try:
                self.sink.close(ok, None if self.keep else self.dir_sizes())
            except BaseException as exc:
                if ok:
                    self.failure = exc
        if ok and self.failure is not None:
            raise self.failure

    def _loop(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.failure is not None:
                continue  # drain, so the crawl never blocks on a dead writer
            try:
                self.sink.write(batch)
            except BaseException as exc:  # re-raised in the crawling thread
                self.failure = exc

    def dir_sizes(self) -> list[tuple[int, str]]:
        """(recursive bytes of uploadables, path) for every directory listed, as the
        manifest defines them (:func:`~desimirror.state.manifest.roll_up`)."""
        return [(nbytes, path) for path, nbytes in roll_up(self.direct).items()]


def open_row_writer(
    manifest: Manifest, crawl_id: int, summary: CrawlSummary, mode: LoadMode, *, fork: bool
) -> RowWriter:
    """A writer for crawl ``crawl_id``: in a forked process if ``fork``, else a thread.
    Open it before the crawl starts any thread: a process forks here."""
    sink_type = _ProcessSink if fork else _ThreadSink
    return RowWriter(sink_type(manifest, crawl_id, mode), summary)
