"""Progress reporting, passed down into the library as an object: only the CLI draws.

On a terminal a rich bar shows files, bytes, rate and ETA; when stderr is piped, a plain
line every few seconds; with ``--json``, nothing until the final report. While the object
store fails, a second line says what it answers (:meth:`Progress.store`), so a store that
refuses everything is not mistaken for a slow upload.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol

from desimirror.units import format_size


class Progress(Protocol):
    """What a long-running stage reports. Totals may be unknown (None) while crawling."""

    def start(self, label: str, files: int | None = None, nbytes: int | None = None) -> None: ...

    def advance(self, files: int = 0, nbytes: int = 0) -> None: ...

    def store(self, text: str | None) -> None:
        """What the store answers while it fails (see :mod:`desimirror.storehealth`);
        None once it works again."""
        ...

    def close(self) -> None: ...


class NullProgress:
    """Reports nothing: for ``--json`` runs and for library callers."""

    def start(self, label: str, files: int | None = None, nbytes: int | None = None) -> None:
        pass

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        pass

    def store(self, text: str | None) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress:
    """A plain status line on stderr at most every ``interval`` seconds (logs, pipes)."""

    def __init__(self, interval: float = 5.0, stream=None) -> None:
        self.interval = interval
        self.stream = stream or sys.stderr
        self.label = ""
        self.files = self.nbytes = 0
        self.total_files: int | None = None
        self.total_bytes: int | None = None
        self.t0 = self.last = time.monotonic()
        self.store_text: str | None = None
        self.store_last = float("-inf")

    def start(self, label: str, files: int | None = None, nbytes: int | None = None) -> None:
        self.label, self.total_files, self.total_bytes = label, files, nbytes
        self.files = self.nbytes = 0
        self.t0 = self.last = time.monotonic()

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        self.files += files
        self.nbytes += nbytes
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._emit(now)

    def _emit(self, now: float) -> None:
        elapsed = max(now - self.t0, 1e-9)
        rate = self.nbytes / elapsed
        files = f"{self.files:,}"
        if self.total_files is not None:
            files += f"/{self.total_files:,}"
        nbytes = format_size(self.nbytes)
        if self.total_bytes:
            nbytes += f"/{format_size(self.total_bytes)}"
        parts = [f"{self.label}: {files} files", nbytes]
        parts.append(f"{format_size(rate)}/s")
        if self.total_bytes and rate > 0:
            eta = (self.total_bytes - self.nbytes) / rate
            parts.append(f"ETA {eta:,.0f}s")
        print(", ".join(parts), file=self.stream, flush=True)

    def store(self, text: str | None) -> None:
        """Print the store's trouble at once when it starts, then at most every interval:
        while every request fails, no file advances the regular line."""
        first = text is not None and self.store_text is None
        self.store_text = text
        now = time.monotonic()
        if text is not None and (first or now - self.store_last >= self.interval):
            self.store_last = now
            print(f"{self.label}: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        self._emit(time.monotonic())


class RichProgress:
    """A live bar on a terminal: files, bytes, rate and ETA."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichBar

        self._bar = RichBar(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[files]} files"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[store]}", style="red"),
            transient=False,
        )
        self._task = None
        self._store_text = ""
        self._files = 0
        self._total_files: int | None = None

    def start(self, label: str, files: int | None = None, nbytes: int | None = None) -> None:
        self._bar.start()
        self._files, self._total_files = 0, files
        self._task = self._bar.add_task(label, total=nbytes, files=self._files_text(), store="")

    def _files_text(self) -> str:
        if self._total_files is None:
            return f"{self._files:,}"
        return f"{self._files:,}/{self._total_files:,}"

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        self._files += files
        self._bar.update(self._task, advance=nbytes, files=self._files_text())

    def store(self, text: str | None) -> None:
        if self._task is not None and (text or "") != self._store_text:
            self._store_text = text or ""
            self._bar.update(self._task, store=self._store_text)

    def close(self) -> None:
        self._bar.stop()


def for_terminal(json_output: bool) -> Progress:
    """The right reporter for how the command was run."""
    if json_output:
        return NullProgress()
    if sys.stderr.isatty():
        return RichProgress()
    return LineProgress()
