"""The upload's transfers on the workers of a Dask cluster (``upload --scheduler``).

This process stays the only writer of the state db: it checks, adopts and records exactly
as on one node (:mod:`.uploader`, :mod:`.recorder`); only the sending moves. To the
uploader, :class:`ClusterBackend` is one more backend: a batch of
:class:`~desimirror.storage.transfer.TransferItem` in, one result per item out. It cuts
the batch into chunks, hands each chunk to the cluster as one task (:func:`send_chunk`, run
on a worker by the configured backend, with the worker's own AWS credential chain), and
yields the chunk's per-file results when its task completes.

Why this keeps the guarantees of one node:

* a file is done only when the worker's backend proved it (the same backends, the same
  proofs) and the result reached this process, which records it as any other;
* each chunk is one task with a key of its own, each file is in one chunk, and a chunk's
  results are taken once, from the future that completed, so a file is recorded at most
  once and is never given to two tasks at once; the uploader sends a file again only
  after its result came back failed;
* a worker that dies mid-chunk loses the chunk's unconfirmed files only: the scheduler
  runs the task again on another worker (objects the dead one had stored are sent again;
  they were never recorded). A task lost too often is a failed, retryable result per file;
* a kill -9 of this process loses what was in flight, as on one node: the next run adopts
  what the workers stored and sends the rest;
* a scheduler that disappears stops the run (exit 4) after what was confirmed is recorded.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from desimirror.errors import RemoteError, UsageError, redact
from desimirror.storage import transfer
from desimirror.storage.throttle import Concurrency
from desimirror.storage.transfer import S3Target, TransferItem, TransferResult
from desimirror.storage.transfer.proving import chunk_items
from desimirror.text import shown

#: A chunk is about this many files (up to twice, to end on a directory) ...
CHUNK_FILES = 256
#: ... or bytes: small enough that a lost worker or a killed coordinator costs little.
CHUNK_BYTES = 4 << 30
#: Chunks queued per worker beyond the one it sends, so that no worker waits for the next.
CHUNKS_AHEAD = 1
#: How long the cluster may give no result at all before the run stops (a scheduler that
#: is gone without a word): longer than any one chunk takes.
SILENCE_SECONDS = 600.0


@dataclass(frozen=True)
class SendSpec:
    """How a worker sends: the backend, its options and the target (no credentials: each
    worker takes them from the AWS chain of its own node)."""

    backend: str
    target: S3Target
    workers: int  # transfers in flight on each worker
    part_size: int
    crawled_dev: int | None = None  # the root's device at the crawl (see SourceTree)


@dataclass(frozen=True)
class ChunkOutcome:
    """What a worker returns for one chunk."""

    worker: str
    results: tuple[TransferResult, ...]
    cpu_seconds: float  # the worker process's CPU while it sent the chunk
    validation: dict[str, object] | None  # its backend's validation note, if any


def chunk_files_for(files: int, slots: int, most: int = CHUNK_FILES) -> int:
    """Files per chunk for a batch of ``files``: spread over every slot of the cluster
    (a small batch keeps every worker busy too), at most ``most``."""
    return max(1, min(most, -(-files // max(1, slots))))


def check_backend(name: str) -> None:
    """Refuse a backend that cannot run on the cluster's workers."""
    if not transfer.get_class(name).sends_checksums:
        raise UsageError(
            f"--scheduler sends with crt or native; --backend {name} proves its objects "
            "by hashing on the node that sends, which a worker does not report"
        )


# -- on the worker ----------------------------------------------------------------------


def send_chunk(spec: SendSpec, items: tuple[TransferItem, ...]) -> ChunkOutcome:
    """Run on a worker: send ``items`` with the spec's backend, one result per item, each
    failure naming the worker. Never raises for a file: a tree this worker cannot see,
    or a backend it cannot start, is a failed (retryable) result per file."""
    name = worker_name()
    cpu0 = time.process_time()
    root = items[0].root if items else None
    results: list[TransferResult]
    note = None
    if root is not None and not os.path.isdir(root):
        why = f"cannot see the source tree {shown(root)} (it must be mounted at that path)"
        results = [_failed(item, why) for item in items]
    else:
        items = _for_this_node(spec, root, items)
        try:
            backend = _POOL.take(spec)
        except Exception as exc:  # a backend that cannot start here
            results = [
                _failed(item, f"cannot start the {spec.backend} backend: {exc}") for item in items
            ]
        else:
            try:
                results = list(backend.put_batch(items))
                note = backend.validation_note()
            except Exception as exc:  # the files are failed, never lost
                results = [_failed(item, f"{type(exc).__name__}: {exc}") for item in items]
            finally:
                _POOL.give_back(spec, backend)
    named = tuple(_named(result, name) for result in results)
    return ChunkOutcome(name, named, time.process_time() - cpu0, note)


def worker_name() -> str:
    """``host/name`` of the Dask worker this runs on (the host alone outside a worker)."""
    host = socket.gethostname()
    try:
        from distributed import get_worker

        return f"{host}/{get_worker().name}"
    except (ImportError, ValueError):
        return host


def _for_this_node(
    spec: SendSpec, root: str | None, items: tuple[TransferItem, ...]
) -> tuple[TransferItem, ...]:
    """Items as this node can check them: a network filesystem may have another device
    number here than at the crawl (inode and ctime are still compared)."""
    if root is None or spec.crawled_dev is None or os.stat(root).st_dev == spec.crawled_dev:
        return items
    return tuple(
        dataclasses.replace(i, signature=dataclasses.replace(i.signature, dev=None))
        if i.signature is not None
        else i
        for i in items
    )


def _failed(item: TransferItem, why: str) -> TransferResult:
    return TransferResult(item, ok=False, error=redact(f"PUT {shown(item.key)}: {why}"))


def _named(result: TransferResult, worker: str) -> TransferResult:
    error = f"{result.error} (on worker {worker})" if result.error else None
    return dataclasses.replace(result, worker=worker, error=error)


class _BackendPool:
    """Backends kept in a worker process between chunks (clients and connections stay
    warm), one per task running at once, so no backend is used by two tasks together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[SendSpec, list[transfer.TransferBackend]] = {}

    def take(self, spec: SendSpec) -> transfer.TransferBackend:
        with self._lock:
            idle = self._idle.get(spec)
            if idle:
                return idle.pop()
        return transfer.get(spec.backend, spec.target, spec.workers, part_size=spec.part_size)

    def give_back(self, spec: SendSpec, backend: transfer.TransferBackend) -> None:
        with self._lock:
            self._idle.setdefault(spec, []).append(backend)


_POOL = _BackendPool()


# -- on the coordinator -----------------------------------------------------------------


class ClusterBackend:
    """A :class:`~desimirror.storage.transfer.TransferBackend` whose transfers run on the
    workers of ``client``'s cluster; see the module docstring."""

    sends_checksums = True

    def __init__(
        self,
        client: Any,
        spec: SendSpec,
        *,
        chunk_files: int = CHUNK_FILES,
        chunk_bytes: int = CHUNK_BYTES,
        address: str = "",
    ) -> None:
        self.client, self.spec = client, spec
        self.name = spec.backend
        self.address = address
        self.chunk_files, self.chunk_bytes = chunk_files, chunk_bytes
        #: Nominal: each worker's backend adapts its own transfers to throttling.
        self.concurrency = Concurrency(spec.workers)
        self.worker_cpu_seconds = 0.0  # what the workers' processes spent sending
        self.chunks = 0
        self._notes: dict[str, dict[str, object]] = {}
        self._run = uuid.uuid4().hex[:12]

    def put_batch(self, items: Iterable[TransferItem]) -> Iterator[TransferResult]:
        batch = list(items)
        slots = self._chunks_in_flight()
        files = chunk_files_for(len(batch), slots, self.chunk_files)
        chunks = iter(chunk_items(batch, files, self.chunk_bytes))
        owner: dict[Any, tuple[TransferItem, ...]] = {}
        done: queue.Queue = queue.Queue()  # futures as they complete (or fail, or are lost)
        for _ in range(slots):
            self._submit(next(chunks, None), owner, done)
        try:
            while owner:
                try:
                    future = done.get(timeout=SILENCE_SECONDS)
                except queue.Empty:
                    raise self._lost(f"no result for {SILENCE_SECONDS:.0f} s") from None
                yield from self._outcome(future, owner.pop(future))
                self._submit(next(chunks, None), owner, done)
        finally:
            for future in owner:  # stopped early (Ctrl-C, a db that failed): let go
                future.cancel()

    def _chunks_in_flight(self) -> int:
        workers = len(self.client.scheduler_info(n_workers=-1).get("workers", {}))
        return max(1, workers) * (1 + CHUNKS_AHEAD)

    def _submit(
        self, chunk: list[TransferItem] | None, owner: dict[Any, tuple], done: queue.Queue
    ) -> None:
        if not chunk:
            return
        self.chunks += 1
        key = f"desimirror-send-{self._run}-{self.chunks}"
        items = tuple(chunk)
        future = self.client.submit(send_chunk, self.spec, items, key=key, pure=False)
        owner[future] = items
        future.add_done_callback(done.put)

    def _outcome(self, future: Any, chunk: tuple[TransferItem, ...]) -> Iterator[TransferResult]:
        """The chunk's results, once each and only for its own items; every item without
        one (a task lost with its workers) is a failed, retryable result."""
        try:
            outcome: ChunkOutcome = future.result()
        except Exception as exc:  # a lost task, or a lost scheduler
            if future.cancelled() or self.client.status != "running":
                raise self._lost(str(exc) or type(exc).__name__) from None
            why = f"the Dask task was lost ({type(exc).__name__}: {exc})"
            yield from (_failed(item, why) for item in chunk)
            return
        self.worker_cpu_seconds += outcome.cpu_seconds
        if outcome.validation:
            self._notes[outcome.worker] = outcome.validation
        expected = {item.key: item for item in chunk}
        for result in outcome.results:
            if expected.pop(result.item.key, None) is not None:
                yield result
        yield from (
            _failed(item, "the worker returned no result for it") for item in expected.values()
        )

    def _lost(self, why: str) -> RemoteError:
        why = " ".join(redact(why).split())  # one line, whatever Dask said
        return RemoteError(
            f"lost the Dask scheduler {self.address}: {why}; what was confirmed is saved, "
            "run the same command again"
        )

    def prepare(self, items: Iterable[TransferItem]) -> None:
        """Nothing is read ahead here: the workers read the files."""

    def validation_note(self) -> dict[str, object] | None:
        """What proved the files the store did not check, summed over the workers."""
        if not self._notes:
            return None
        notes = list(self._notes.values())
        proven: dict[str, int] = {}
        for note in notes:
            for how, count in dict(note.get("proven_by") or {}).items():
                proven[how] = proven.get(how, 0) + int(count)
        return {**notes[-1], "files": sum(proven.values()), "proven_by": proven}

    def close(self) -> None:
        """The client belongs to the caller, who closes it."""
