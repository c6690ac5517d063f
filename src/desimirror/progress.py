"""Progress reporting, passed down into the library as an object: only the CLI draws.

On a terminal a rich bar shows the phase (listing the bucket, hashing, sending), files,
bytes, rate and ETA; when stderr is piped, a plain line every few seconds and at each new
phase; with ``--json``, nothing until the final report.

Rate and ETA are computed by :func:`throughput` alone, for the bar and for ``desimirror
status`` (:mod:`desimirror.pipeline.status`), so the two agree at any moment: the average since the
run began, and an ETA only once that average means something.
While the object store fails, a second line says what it answers (:meth:`Progress.store`),
so a store that refuses everything is not mistaken for a slow upload.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Protocol

from desimirror.text import plural
from desimirror.units import format_size

#: No ETA before the run has gone on this long and moved this much: before that the
#: average is noise (the first second's rate of a 300 TB upload says nothing).
ETA_AFTER_SECONDS = 10.0
ETA_AFTER_BYTES = 10 * 10**6


@dataclass(frozen=True)
class Throughput:
    """Bytes per second so far, and the seconds left at that rate (None: not yet known)."""

    bytes_per_second: float
    eta_seconds: float | None


def throughput(done_bytes: float, seconds: float, remaining_bytes: float | None) -> Throughput:
    """The one definition of rate and ETA: ``done_bytes`` over ``seconds`` since the run
    began; the ETA is what remains at that rate, given only after ``ETA_AFTER_SECONDS``
    and ``ETA_AFTER_BYTES``."""
    rate = done_bytes / seconds if seconds > 0 else 0.0
    eta = None
    known = seconds >= ETA_AFTER_SECONDS and done_bytes >= ETA_AFTER_BYTES
    if remaining_bytes is not None and known and rate > 0:
        eta = max(remaining_bytes, 0) / rate
    return Throughput(rate, eta)


def format_eta(seconds: float) -> str:
    """``45s``, ``3m 20s``, ``2h 05m``, ``3d 4h``: precise enough to plan by."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def describe_rate(t: Throughput) -> str:
    """``19.8 MB/s, ETA 3m 20s`` (the ETA left out until it is known)."""
    text = f"{format_size(t.bytes_per_second)}/s"
    return text if t.eta_seconds is None else f"{text}, ETA {format_eta(t.eta_seconds)}"


def describe_workers(rates: dict[str, float]) -> str:
    """``2 workers: nid01/0 120.0 MB/s, nid02/0 118.3 MB/s`` from worker -> bytes per
    second (with many workers: the range and the slowest one)."""
    head = plural(len(rates), "worker")
    if len(rates) <= 4:
        return f"{head}: " + ", ".join(f"{w} {format_size(rates[w])}/s" for w in sorted(rates))
    slowest = min(rates, key=rates.__getitem__)
    low, high = rates[slowest], max(rates.values())
    return f"{head}: {format_size(low)}/s to {format_size(high)}/s each, slowest {slowest}"


def worker_rates(by_worker: dict[str, list[int]], seconds: float) -> dict[str, float]:
    """worker -> bytes per second, from worker -> [files, bytes] over ``seconds``."""
    return {w: (b / seconds if seconds > 0 else 0.0) for w, (_f, b) in by_worker.items()}


class Progress(Protocol):
    """What a long-running stage reports. Totals may be unknown (None) while crawling."""

    def start(self, label: str, files: int | None = None, nbytes: int | None = None) -> None: ...

    def phase(self, name: str) -> None:
        """What the stage is doing now ("listing the bucket", "hashing", "sending"), so
        that a count that does not move for a while says why."""

    def advance(self, files: int = 0, nbytes: int = 0) -> None: ...

    def store(self, text: str | None) -> None:
        """What the store answers while it fails (see :mod:`desimirror.storage.health`);
        None once it works again."""
        ...

    def note(self, text: str) -> None:
        """A line beside the count that changes as it goes (each Dask worker's rate)."""
        ...

    def close(self) -> None: ...


# -- what was done, for the message on Ctrl-C ------------------------------------------


@dataclass
class _Tally:
    label: str = ""
    files: int = 0
    nbytes: int = 0
    total_files: int | None = None


_tally = _Tally()
_resume_command: list[str] | None = None


def _track_start(label: str, files: int | None) -> None:
    global _tally
    _tally = _Tally(label, 0, 0, files)


def _track_advance(files: int, nbytes: int) -> None:
    _tally.files += files
    _tally.nbytes += nbytes


def set_resume_command(argv: list[str] | None) -> None:
    """The command that resumes what this process does (said when it is interrupted)."""
    global _resume_command
    _resume_command = list(argv) if argv else None


def resume_hint() -> str:
    """``run 'desimirror upload --db m.db' to resume`` (or the same command, if unknown)."""
    if _resume_command:
        return f"run '{shlex.join(_resume_command)}' to resume"
    return "run the same command to resume"


def interrupted_message(by: str | None = None) -> str:
    """The one line printed when a command is interrupted (Ctrl-C, or a termination
    signal turned into one, named in ``by``): what was saved, and how to go on."""
    hint = resume_hint()
    how = f"interrupted ({by})" if by else "interrupted"
    if _tally.label == "upload":
        of = f" of {_tally.total_files:,}" if _tally.total_files is not None else ""
        files = plural(_tally.files, "file")
        return (
            f"desimirror: {how}: {files}{of} ({format_size(_tally.nbytes)}) confirmed "
            f"in this run are saved in the state db; {hint}"
        )
    if _tally.label == "download":
        of = f" of {_tally.total_files:,}" if _tally.total_files is not None else ""
        files = plural(_tally.files, "file")
        return (
            f"desimirror: {how}: {files}{of} ({format_size(_tally.nbytes)}) fetched and "
            f"proven in this run are in place and recorded; {hint}"
        )
    return f"desimirror: {how}: what was confirmed is saved in the state db; {hint}"


def _interrupted() -> bool:
    """True when called while an interruption propagates (in a ``finally``)."""
    exc = sys.exc_info()[1]
    return exc is not None and not isinstance(exc, Exception)


# -- reporters ---------------------------------------------------------------------------


class NullProgress:
    """Reports nothing: for ``--json`` runs and for library callers."""

    def start(self, label: str, files: int | None = None, nbytes: int | None = None) -> None:
        del nbytes  # nothing is drawn
        _track_start(label, files)

    def phase(self, name: str) -> None:
        pass

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        _track_advance(files, nbytes)

    def store(self, text: str | None) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress:
    """A plain status line on stderr at most every ``interval`` seconds (logs, pipes), and
    one when a phase is first entered."""

    def __init__(self, interval: float = 5.0, stream=None) -> None:
        self.interval = interval
        self.stream = stream or sys.stderr
        self.label = ""
        self.current_phase: str | None = None
        self.announced: set[str] = set()
        self.files = self.nbytes = 0
        self.total_files: int | None = None
        self.total_bytes: int | None = None
        self.t0 = self.last = time.monotonic()
        self.closed = False
        self.store_text: str | None = None
        self.store_last = float("-inf")
        self.note_last = time.monotonic()

    def start(self, label: str, files: int | None = None, nbytes: int | None = None) -> None:
        _track_start(label, files)
        self.label, self.total_files, self.total_bytes = label, files, nbytes
        self.files = self.nbytes = 0
        self.current_phase, self.announced, self.closed = None, set(), False
        self.t0 = self.last = time.monotonic()

    def phase(self, name: str) -> None:
        if name == self.current_phase:
            return
        self.current_phase = name
        if name not in self.announced:
            self.announced.add(name)
            self.last = now = time.monotonic()
            self._emit(now)

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        _track_advance(files, nbytes)
        self.files += files
        self.nbytes += nbytes
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._emit(now)

    def _emit(self, now: float) -> None:
        files = f"{self.files:,}"
        if self.total_files is not None:
            files += f"/{self.total_files:,}"
        nbytes = format_size(self.nbytes)
        remaining = None
        if self.total_bytes:
            nbytes += f"/{format_size(self.total_bytes)}"
            remaining = self.total_bytes - self.nbytes
        label = f"{self.label} ({self.current_phase})" if self.current_phase else self.label
        rate = describe_rate(throughput(self.nbytes, now - self.t0, remaining))
        print(f"{label}: {files} files, {nbytes}, {rate}", file=self.stream, flush=True)

    def store(self, text: str | None) -> None:
        """Print the store's trouble at once when it starts, then at most every interval:
        while every request fails, no file advances the regular line."""
        first = text is not None and self.store_text is None
        self.store_text = text
        now = time.monotonic()
        if text is not None and (first or now - self.store_last >= self.interval):
            self.store_last = now
            print(f"{self.label}: {text}", file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """Printed with the regular line, at most every interval."""
        now = time.monotonic()
        if now - self.note_last >= self.interval:
            self.note_last = now
            print(f"{self.label}: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not _interrupted():  # the interruption message says where it stopped
            self._emit(time.monotonic())


#: Columns left free at the right of the bar: the terminal echoes ``^C`` after it, and a
#: bar as wide as the terminal would wrap there and be drawn a second time below.
_MARGIN = 3


class RichProgress:
    """A live bar on a terminal (stderr): phase, files, bytes, rate and ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, ProgressColumn, TextColumn
        from rich.progress import Progress as RichBar
        from rich.text import Text

        class RateColumn(ProgressColumn):
            """Rate and ETA by :func:`throughput`, as ``desimirror status`` computes them."""

            def render(self, task) -> Text:
                remaining = None if task.total is None else task.total - task.completed
                t = throughput(task.completed, task.elapsed or 0.0, remaining)
                return Text(describe_rate(t))

        try:
            columns = os.get_terminal_size(sys.stderr.fileno()).columns
        except (OSError, ValueError):
            columns = 80
        console = Console(stderr=True, width=max(40, columns - _MARGIN))
        self._bar = RichBar(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TextColumn("{task.fields[files]} files", markup=False),
            DownloadColumn(),
            RateColumn(),
            TextColumn("{task.fields[store]}", style="red"),
            TextColumn("{task.fields[note]}", markup=False),
            console=console,
            transient=False,
        )
        self._task = None
        self._label = ""
        self._phase: str | None = None
        self._store_text = ""
        self._files = 0
        self._total_files: int | None = None
        self._running = False

    def start(self, label: str, files: int | None = None, nbytes: int | None = None) -> None:
        """Start the bar, or start it over with totals now known (one line, not two)."""
        _track_start(label, files)
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._bar.start()
        self._running = True
        self._label, self._phase = label, None
        self._files, self._total_files = 0, files
        self._task = self._bar.add_task(
            label, total=nbytes, files=self._files_text(), store="", note=""
        )

    def phase(self, name: str) -> None:
        if name != self._phase and self._task is not None:
            self._phase = name
            self._bar.update(self._task, description=f"{self._label} ({name})")

    def _files_text(self) -> str:
        if self._total_files is None:
            return f"{self._files:,}"
        return f"{self._files:,}/{self._total_files:,}"

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        _track_advance(files, nbytes)
        self._files += files
        self._bar.update(self._task, advance=nbytes, files=self._files_text())

    def store(self, text: str | None) -> None:
        if self._task is not None and (text or "") != self._store_text:
            self._store_text = text or ""
            self._bar.update(self._task, store=self._store_text)

    def note(self, text: str) -> None:
        if self._task is not None:
            self._bar.update(self._task, note=text)

    def close(self) -> None:
        if self._running:
            self._running = False
            self._bar.stop()


def for_terminal(json_output: bool) -> Progress:
    """The right reporter for how the command was run."""
    if json_output:
        return NullProgress()
    if sys.stderr.isatty():
        return RichProgress()
    return LineProgress()
