"""The s5cmd backend: one ``s5cmd run`` per batch, one JSON result line per file.

s5cmd is the fast default (Go, hundreds of parallel requests, its own per-request retries,
which survived a fault-injecting proxy intact). It is driven by ``cp --raw SRC DST`` lines
written to ``s5cmd run`` on its standard input as the items arrive (s5cmd starts each line
as it reads it, so a caller that hashes files first does not hold the transfer back until
the whole batch is hashed), and by its ``--json`` output, read as it arrives, so every file
gets its own result without waiting for the whole batch.

A run of items that makes up a whole directory (every entry of the source directory, as
it is on disk when the line is written, is a regular file of the run, under the same
names in one key directory) goes as one ``cp 'DIR/*' s3://.../KEYDIR/`` line: s5cmd sets
up each command line at about half a millisecond of CPU, which on small files was a third
of its time, and it still reports every file it copies on a line of its own (errors
included), so the bookkeeping below is the same. Anything else in the directory (a file
not in the batch, a symlink, a subdirectory, a name s5cmd's patterns would read as a
wildcard) keeps the items on ``cp --raw`` lines of their own.

What s5cmd cannot carry is refused up front with ``retryable=False``: a newline in a path
or key breaks the line-based command file (one bad line makes s5cmd abort the whole run;
the native backend can send such files), and a key ending in ``/`` is taken as a prefix
(s5cmd would append the file name; both backends refuse such keys).

Bookkeeping never trusts the exit status: a file is done only when its success line names
its destination and reports its size. Error lines do not reliably identify the file, so
they only supply the message of files that got no success line.

The child must not outlive us: it gets SIGKILL when the thread that started it dies
(Linux ``PR_SET_PDEATHSIG``), and is killed by PID when the batch generator is closed
early, raises, or makes no progress for too long.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from desimirror import processes
from desimirror.binaries import find_binary
from desimirror.errors import UsageError
from desimirror.storage.s3client import (
    CREDENTIALS_HINT,
    endpoint_url,
    is_throttle,
    one_line,
    retryable_error,
)
from desimirror.storage.throttle import Concurrency
from desimirror.storage.transfer.base import (
    DEFAULT_PART_SIZE,
    S3Target,
    TransferItem,
    TransferResult,
)
from desimirror.units import MiB

_PR_SET_PDEATHSIG = 1
_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"^([A-Za-z][A-Za-z0-9]+):")
_NOISE = re.compile(r",? ?(request id|host id):.*$")
_LOCAL_FATAL = ("not found", "permission denied", "is a directory", "no such file")
_WILDCARD = set("*?[]{}\\")


class S5cmdBackend:
    """Uploads batches with ``s5cmd run``; see the module docstring for the contract."""

    name = "s5cmd"
    #: s5cmd sends no checksums: the uploader hashes files itself and compares ETags.
    sends_checksums = False
    #: s5cmd's own retries per request (each multipart part separately). 6 retries take
    #: about 4 s against a refused connection; throttling backs off longer.
    retry_count = 6
    #: Parts of one file in flight at once (s5cmd's default).
    part_concurrency = 5
    #: Kill s5cmd when no result line arrives for this long, plus the time the largest file
    #: of the batch needs at ``min_bytes_per_second``: a stalled connection must not hang
    #: the uploader forever, a slow large file must not be killed.
    idle_timeout = 300.0
    min_bytes_per_second = 1 * MiB
    #: Bound on every wait for the child after it was told to stop or has closed its output.
    exit_wait = 10.0
    #: A whole directory of at least this many files goes as one wildcard line.
    min_directory_files = 4

    def __init__(
        self, target: S3Target, workers: int, *, part_size: int = DEFAULT_PART_SIZE
    ) -> None:
        self.target = target
        self.workers = max(1, int(workers))
        #: Multipart part size. s5cmd (aws-sdk-go) switches to multipart above one part, so
        #: this is also the threshold; the native backend uses the same so that ETags agree.
        self.part_size_mib = max(1, part_size // MiB)
        self.binary = find_binary("s5cmd")
        #: Adaptive limit: each run gets the current limit as --numworkers.
        self.concurrency = Concurrency(self.workers)
        self._children: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.whole_directories = 0  # wildcard lines written, for the curious and the tests

    def command(self) -> list[str]:
        """The s5cmd argument vector for one batch. No secret ever appears in it."""
        argv = [self.binary, "--json", "--log", "info"]
        url = endpoint_url(self.target)
        if url:
            argv += ["--endpoint-url", url]
        if self.target.no_sign_request:
            argv.append("--no-sign-request")
        workers = min(self.workers, self.concurrency.limit)
        argv += ["--numworkers", str(workers), "--retry-count", str(self.retry_count)]
        return [*argv, "run"]

    def command_line(self, item: TransferItem) -> str:
        """One ``cp`` line of the command file; s5cmd splits it with POSIX shell quoting."""
        return " ".join(
            [
                "cp",
                "--raw",
                f"--part-size={self.part_size_mib}",
                f"--concurrency={self.part_concurrency}",
                shlex.quote(item.source),
                shlex.quote(self.target.url(item.key)),
            ]
        )

    def directory_line(self, items: Sequence[TransferItem]) -> str:
        """One ``cp`` line for a whole directory; see :meth:`_whole_directory`."""
        source_dir = os.path.dirname(items[0].source)
        key_dir = items[0].key.rpartition("/")[0]
        return " ".join(
            [
                "cp",
                "--no-follow-symlinks",
                f"--part-size={self.part_size_mib}",
                f"--concurrency={self.part_concurrency}",
                shlex.quote(source_dir + "/*"),
                shlex.quote(self.target.url(key_dir) + "/"),
            ]
        )

    def put_batch(self, items: Iterable[TransferItem]) -> Iterator[TransferResult]:
        """Upload ``items`` with one s5cmd process; yield one result per item as it ends.

        ``items`` may be a generator that is slow to produce (hashing files first): it is
        consumed in a feeder thread, and s5cmd starts once the first sendable item exists.
        """
        book = _Book(self.target)
        remaining = iter(items)
        for first in remaining:
            problem = unsendable(first)
            if not problem:
                break
            yield book.failure(first, problem, retryable=False)
        else:
            return
        for result in self._run(book, itertools.chain([first], remaining)):
            if result.throttled:
                self.concurrency.throttled()
            else:
                self.concurrency.completed(result.ok)
            yield result

    def _run(self, book: _Book, items: Iterator[TransferItem]) -> Iterator[TransferResult]:
        proc = self._spawn()
        lines: queue.Queue[tuple[str, Any]] = queue.Queue()
        stop = threading.Event()
        feeder_failed: list[BaseException] = []
        threads = [
            threading.Thread(target=_pump, args=(tag, stream, lines), daemon=True)
            for tag, stream in (("out", proc.stdout), ("err", proc.stderr))
        ]
        threads.append(
            threading.Thread(
                target=self._feed,
                args=(proc.stdin, items, lines, stop, feeder_failed),
                daemon=True,
            )
        )
        for thread in threads:
            thread.start()
        largest = 0
        try:
            open_streams, stopped = len(threads), False
            while open_streams:
                wait = (
                    self.exit_wait
                    if stopped
                    else self.idle_timeout + largest / max(1, self.min_bytes_per_second)
                )
                try:
                    tag, payload = lines.get(timeout=wait)
                except queue.Empty:
                    if stopped:
                        break  # killed, yet its output never closed: give up on the rest
                    book.note(f"s5cmd made no progress for {wait:.0f} s and was stopped")
                    stop.set()
                    self._kill(proc)
                    stopped = True  # read what it wrote before it died
                    continue
                if payload is None:
                    open_streams -= 1
                elif tag == "add":
                    book.add(payload)
                    largest = max(largest, payload.size)
                elif tag == "refuse":
                    item, problem = payload
                    yield book.failure(item, problem, retryable=False)
                elif (result := book.line(tag, payload.decode("utf-8", "replace"))) is not None:
                    yield result
            book.note(self._finish(proc))
        finally:
            stop.set()
            self._kill(proc)
            for thread in threads:
                thread.join(timeout=self.exit_wait)
            if not any(thread.is_alive() for thread in threads):
                for stream in (proc.stdout, proc.stderr):
                    with contextlib.suppress(OSError):
                        stream.close()
        if feeder_failed:
            raise feeder_failed[0]
        yield from book.leftovers()

    def _feed(
        self,
        stdin: Any,
        items: Iterator[TransferItem],
        lines: queue.Queue,
        stop: threading.Event,
        failed: list[BaseException],
    ) -> None:
        """Write the command lines for the items to s5cmd, announcing each item first (so
        its result line always finds it in the book). If s5cmd goes away, the remaining
        items are still announced, unsent, so that each of them is reported as failed.

        The items of a directory that could go whole (its listing holds only regular
        files, enough of them) are held until the last of them arrives; an item the
        listing does not name, or one of another directory, releases them line by line.
        """
        held: list[TransferItem] = []
        expected: set[str] | None = None
        where: tuple[str, str] | None = None

        def write(text: str) -> None:
            nonlocal stdin
            if stdin is None:
                return
            try:
                stdin.write((text + "\n").encode("utf-8", "surrogateescape"))
                stdin.flush()
            except OSError:
                stdin = None  # s5cmd exited or was killed

        def release(whole: bool) -> None:
            for item in held:
                lines.put(("add", item))
            if whole:
                self.whole_directories += 1
                write(self.directory_line(held))
            else:
                for item in held:
                    write(self.command_line(item))
            held.clear()

        try:
            for item in items:
                if stop.is_set():
                    break
                problem = unsendable(item)
                if problem:
                    lines.put(("refuse", (item, problem)))
                    continue
                here = _directory_of(item)
                if here != where:
                    release(False)  # the last directory ended before all its files came
                    where = here
                    expected = _regular_files(here, self.min_directory_files)
                if expected is None or item.source.rpartition("/")[2] not in expected:
                    release(False)
                    expected = None  # the rest of this directory goes file by file
                    lines.put(("add", item))
                    write(self.command_line(item))
                    continue
                held.append(item)
                if len(held) == len(expected):
                    release(_whole_directory(held))
                    expected = None
            if not stop.is_set():
                release(False)
        except BaseException as exc:  # re-raised in the consuming thread
            failed.append(exc)
        finally:
            if stdin is not None:
                with contextlib.suppress(OSError):
                    stdin.close()
            lines.put(("in", None))

    def _spawn(self) -> subprocess.Popen:
        env = dict(os.environ)
        if self.target.region:
            env["AWS_REGION"] = self.target.region
        try:
            proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                preexec_fn=_die_with_parent(),  # the child runs one prctl call, nothing else
            )
        except OSError as exc:  # every batch would fail the same way: stop, do not record
            raise UsageError(f"cannot run {self.binary}: {exc.strerror or exc}") from None
        with self._lock:
            self._children.add(proc)
        return proc

    def _finish(self, proc: subprocess.Popen) -> str:
        """Wait (bounded) for an s5cmd that closed its output; describe how it ended."""
        try:
            status = proc.wait(timeout=self.exit_wait)
        except subprocess.TimeoutExpired:
            return f"s5cmd did not exit within {self.exit_wait:.0f} s after its output ended"
        if status < 0:
            return f"s5cmd was killed by signal {-status}"
        return f"s5cmd exited with status {status}"

    def _kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL the child by PID (s5cmd keeps no state worth a graceful stop), then reap it."""
        try:
            if proc.poll() is None:
                processes.stop(proc, terminate_first=False)
        finally:
            with self._lock:
                self._children.discard(proc)

    def prepare(self, items: Iterable[TransferItem]) -> None:
        """Nothing to do ahead: files are read when they are sent."""

    def validation_note(self) -> dict[str, object] | None:
        """None: s5cmd sends no checksum for the store to check; :mod:`.proving` proves
        its objects by their ETags."""
        return None

    def close(self) -> None:
        """Kill any s5cmd still running (a batch abandoned without being closed)."""
        with self._lock:
            children = list(self._children)
        for proc in children:
            self._kill(proc)


def unsendable(item: TransferItem) -> str | None:
    """Why s5cmd cannot upload ``item`` exactly as asked, or None if it can."""
    for what, text in (("path", item.source), ("key", item.key)):
        if "\n" in text or "\0" in text:
            return f"s5cmd cannot pass a {what} containing a newline; use the native backend"
    if not item.key or item.key.endswith("/"):
        return "a key ending in '/' names a directory, not a file (s5cmd appends the file name)"
    try:
        item.key.encode("utf-8")
    except UnicodeEncodeError:
        return "the key is not valid UTF-8"
    return None


def _directory_of(item: TransferItem) -> tuple[str, str] | None:
    """(source directory, key directory) when the key ends in the file's own name, the
    only case a wildcard line can send; else None."""
    source_dir, _, name = item.source.rpartition("/")
    key_dir, _, key_name = item.key.rpartition("/")
    if not source_dir or not key_dir or name != key_name:
        return None
    return source_dir, key_dir


def _regular_files(where: tuple[str, str] | None, at_least: int) -> set[str] | None:
    """The names in a source directory that could go whole, or None if it cannot: it
    holds something else than regular files, fewer than ``at_least``, or a path has a
    character s5cmd reads as a pattern."""
    if where is None or any(c in _WILDCARD for c in where[0] + where[1]):
        return None
    names: set[str] = set()
    try:
        with os.scandir(where[0]) as listing:
            for entry in listing:
                if not entry.is_file(follow_symlinks=False):
                    return None
                names.add(entry.name)
    except OSError:
        return None
    return names if len(names) >= at_least else None


def _whole_directory(run: Sequence[TransferItem]) -> bool:
    """Whether ``DIR/*`` would match exactly the files of ``run``, as the disk is now
    (checked again as the line is written: files may have come or gone meanwhile)."""
    names = {item.source.rpartition("/")[2] for item in run}
    return len(names) == len(run) and _regular_files(_directory_of(run[0]), 1) == names


def _pump(tag: str, stream: Any, lines: queue.Queue) -> None:
    """Forward one output stream of s5cmd, line by line, then a None at its end."""
    try:
        for raw in iter(stream.readline, b""):
            lines.put((tag, raw))
    except (OSError, ValueError):
        pass  # the stream was closed under us: the child is being killed
    finally:
        lines.put((tag, None))


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGKILL the child when our thread dies.

    Covers ``kill -9`` of the uploader, which no ``finally`` can. It is set up before the
    fork so that the child only makes one prctl call (no imports, no allocation of note).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _Book:
    """Which items of a batch are still waiting for their s5cmd result line."""

    def __init__(self, target: S3Target) -> None:
        self.target = target
        self.pending: dict[str, list[TransferItem]] = {}  # destination URL -> items
        self.errors: dict[str, str] = {}  # destination URL -> last error line for it
        self.messages: list[str] = []  # error lines that name no pending destination
        self._prefix = f" {target.url()}"

    def add(self, item: TransferItem) -> None:
        self.pending.setdefault(self.target.url(item.key), []).append(item)

    def failure(
        self,
        item: TransferItem,
        error: str,
        *,
        retryable: bool,
        throttled: bool = False,
        reason: str | None = None,
    ) -> TransferResult:
        message = one_line(f"PUT {self.target.url(item.key)}: {error}")
        return TransferResult(
            item, ok=False, error=message, retryable=retryable, throttled=throttled, reason=reason
        )

    def note(self, message: str) -> None:
        self.messages.append(message)

    def line(self, tag: str, text: str) -> TransferResult | None:
        """Account for one output line; the result it settles, if any."""
        text = text.strip()
        if not text:
            return None
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            self.note(text)
            return None
        if record.get("success") is True and tag == "out":
            return self._success(record)
        if "error" in record:
            self._error(record)
        return None

    def _success(self, record: dict) -> TransferResult | None:
        destination = str(record.get("destination", ""))
        source = str(record.get("source", ""))
        obj = record.get("object")
        size = obj.get("size", 0) if isinstance(obj, dict) else None  # Go omits a zero size
        items = self.pending.get(destination)
        if items:
            item = next((i for i in items if i.source == source), items[0])
            self._settle(destination, item)
            if size != item.size:
                return self.failure(
                    item,
                    f"s5cmd sent {size} bytes, expected {item.size}: the file changed",
                    retryable=False,
                    reason="changed",
                )
            return TransferResult(item, ok=True)
        # s5cmd wrote somewhere we did not ask for: never call that a success for our key.
        for dest, candidates in self.pending.items():
            for item in candidates:
                if item.source == source:
                    self._settle(dest, item)
                    return self.failure(
                        item,
                        f"s5cmd wrote {destination} instead; use the native backend",
                        retryable=False,
                    )
        self.note(f"unmatched s5cmd result for {destination}")
        return None

    def _settle(self, destination: str, item: TransferItem) -> None:
        items = self.pending[destination]
        items.remove(item)
        if not items:
            del self.pending[destination]

    def _error(self, record: dict) -> None:
        error = str(record.get("error", ""))
        command = str(record.get("command", ""))
        # the destination is the command's last argument; s5cmd prints it unquoted
        start = command.find(self._prefix)
        while start >= 0:
            candidate = command[start + 1 :]
            if candidate in self.pending:
                self.errors[candidate] = error
                return
            start = command.find(self._prefix, start + 1)
        self.note(f"{command}: {error}" if command else error)

    def leftovers(self) -> Iterator[TransferResult]:
        """A failure for every item that never got a success line."""
        fallback = "; ".join(self.messages[-3:]) or "s5cmd gave no result for this file"
        for destination, items in list(self.pending.items()):
            error = self.errors.get(destination)
            for item in items:
                if error is None:
                    yield self.failure(item, f"no result from s5cmd ({fallback})", retryable=True)
                else:
                    text, retryable = _classify(error)
                    yield self.failure(item, text, retryable=retryable, throttled=_throttled(text))
        self.pending.clear()


def _throttled(text: str) -> bool:
    """Whether s5cmd's final error for a file was the store asking to slow down."""
    code_match = _CODE.match(text)
    status_match = _STATUS.search(text)
    return is_throttle(
        code_match.group(1) if code_match else None,
        int(status_match.group(1)) if status_match else None,
    )


def _classify(error: str) -> tuple[str, bool]:
    """A cleaned-up s5cmd error message, and whether the file is worth another attempt.

    The same S3 codes are final here as in the native backend, so the caller sees one
    policy whichever backend ran.
    """
    text = _NOISE.sub("", error.strip())
    if text.startswith("NoCredentialProviders"):
        return "no AWS credentials found: " + CREDENTIALS_HINT, False
    code_match = _CODE.match(text)
    status_match = _STATUS.search(text)
    code = code_match.group(1) if code_match else None
    status = int(status_match.group(1)) if status_match else None
    if code is None and status is None:
        lowered = text.lower()
        return text, not any(marker in lowered for marker in _LOCAL_FATAL)
    return text, retryable_error(code, status)
