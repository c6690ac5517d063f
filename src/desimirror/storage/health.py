"""What the object store answers, said plainly: its errors, and whether it checks checksums.

An upload against a store whose disk is full, or whose server died, used to look like a
slow upload: every PUT failed, the files went round their retries, and the terminal showed
only an ETA of a thousand days. :class:`StoreHealth` counts the store's answers to the
uploader (successes, failures and the last error, redacted), says when the uploader is
backing off and until when, and decides when to give up: after ``give_up_after`` seconds
in which the store answered nothing but failures. The progress line shows
:meth:`StoreHealth.line`; the state db keeps :meth:`StoreHealth.as_dict` at every commit,
so ``desimirror status`` shows the same from another shell.

:func:`validation_text` words the other thing a store can do silently: accept checksums it
never checked (Ceph radosgw 16 ignores ``x-amz-checksum-sha256``), so that the upload,
``status`` and ``verify`` all say what proved the content instead.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from desimirror.errors import redact

#: Seconds of store answers the error rate is computed over.
WINDOW_SECONDS = 60.0
DEFAULT_GIVE_UP_SECONDS = 300.0
_MAX_ERROR = 240


class StoreHealth:
    """Successes and failures of transfers to one store; see the module docstring.

    ``clock`` (monotonic) decides; ``wall`` only dates what is shown and stored.
    Not thread-safe: the uploader settles results on one thread.
    """

    def __init__(
        self,
        give_up_after: float = DEFAULT_GIVE_UP_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.give_up_after = give_up_after
        self.clock, self.wall = clock, wall
        self.successes = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # wall time
        self.last_success_at: float | None = None  # wall time
        self._failing_since: float | None = None  # clock time of the first failure in a row
        self._failing_since_wall: float | None = None
        self._backoff_until: float | None = None  # wall time
        self._recent: deque[tuple[float, bool]] = deque()  # (clock time, ok)
        self._recent_failed = 0  # failures in _recent: kept as it goes, read at every result

    # -- what happened --------------------------------------------------------------------

    def success(self) -> None:
        """The store accepted a request: a run of failures, if any, is over."""
        now = self.clock()
        self.successes += 1
        self.last_success_at = self.wall()
        self._failing_since = self._failing_since_wall = None
        self._backoff_until = None
        self._remember(now, True)

    def failure(self, error: str) -> None:
        """The store refused a request or could not be reached; ``error`` is its answer."""
        now = self.clock()
        self.failures += 1
        text = redact(" ".join(str(error).split()))
        self.last_error = text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."
        self.last_error_at = self.wall()
        if self._failing_since is None:
            self._failing_since, self._failing_since_wall = now, self.last_error_at
        self._remember(now, False)

    def backing_off(self, seconds: float) -> None:
        """The uploader waits ``seconds`` before trying the failed files again."""
        self._backoff_until = self.wall() + max(0.0, seconds)

    def _remember(self, now: float, ok: bool) -> None:
        self._recent.append((now, ok))
        self._recent_failed += not ok
        self._forget_before(now - WINDOW_SECONDS)

    def _forget_before(self, start: float) -> None:
        while self._recent and self._recent[0][0] < start:
            _, was_ok = self._recent.popleft()
            self._recent_failed -= not was_ok

    # -- what it means ---------------------------------------------------------------------

    @property
    def failing(self) -> bool:
        """True while the store's latest answers are all failures."""
        return self._failing_since is not None

    def failing_for(self) -> float:
        """Seconds since the store last answered anything but a failure (0 if it does)."""
        return 0.0 if self._failing_since is None else self.clock() - self._failing_since

    def should_give_up(self) -> bool:
        """Whether the store has answered nothing but failures for ``give_up_after`` s."""
        return self.failing and self.failing_for() >= self.give_up_after

    def recent(self) -> tuple[int, int]:
        """(failures, answers) within the last :data:`WINDOW_SECONDS`."""
        self._forget_before(self.clock() - WINDOW_SECONDS)
        return self._recent_failed, len(self._recent)

    def line(self) -> str | None:
        """One line for the terminal while the store fails, else None."""
        failed, answers = self.recent()
        if not failed:
            return None
        window = f"{WINDOW_SECONDS:.0f}s"
        text = f"store: {failed:,} of {answers:,} transfers failed in the last {window}"
        if self.failing:
            text += f", nothing but failures for {self.failing_for():.0f}s"
            text += f" (giving up after {self.give_up_after:.0f}s)"
        if self._backoff_until is not None and self._backoff_until > self.wall():
            text += f"; backing off until {_clock_text(self._backoff_until)}"
        return f"{text}; last error: {self.last_error}"

    def give_up_message(self, endpoint: str) -> str:
        """The one-line error of an upload that gave up on the store."""
        return (
            f"giving up: the S3 store at {endpoint} answered nothing but failures for "
            f"{self.failing_for():.0f}s ({self.failures:,} failed transfers, "
            f"--give-up-after {self.give_up_after:g}s), last error: {self.last_error} "
            "(what the store confirmed stays done; run the same command again once the "
            "store works)"
        )

    def as_dict(self) -> dict[str, object]:
        """A small JSON-able record for the state db (``desimirror status`` reads it)."""
        failed, answers = self.recent()
        return {
            "at": self.wall(),
            "successes": self.successes,
            "failures": self.failures,
            "recent_failures": failed,
            "recent_transfers": answers,
            "window_seconds": WINDOW_SECONDS,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_success_at": self.last_success_at,
            "failing_since": self._failing_since_wall,
            "backoff_until": self._backoff_until,
            "gave_up": self.should_give_up(),
        }


def health_text(note: dict) -> str | None:
    """``status``'s line for a health record kept by :meth:`StoreHealth.as_dict`, or None
    when the store answered without failures."""
    if not note.get("failures"):
        return None
    text = (
        f"{note['failures']:,} failed transfers, {note.get('successes', 0):,} succeeded in the "
        f"last upload (as of {_clock_text(note['at'])})"
    )
    if note.get("failing_since"):
        text += f"; nothing but failures since {_clock_text(note['failing_since'])}"
    if note.get("backoff_until") and note["backoff_until"] > time.time():
        text += f"; backing off until {_clock_text(note['backoff_until'])}"
    if note.get("gave_up"):
        text += "; the upload gave up"
    return f"{text}; last error: {note.get('last_error')}"


def validation_text(note: dict) -> str:
    """The plain sentence for a store that returned no checksum for files sent with one
    (recorded by the native backend; see :meth:`NativeBackend.validation_note`)."""
    files = int(note.get("files", 0))
    proven = note.get("proven_by") or {}
    how = ", ".join(f"{n:,} by {proof}" for proof, n in sorted(proven.items()))
    text = (
        f"the store at {note.get('endpoint') or 'AWS'} returned no SHA-256 checksum for "
        f"{files:,} files sent with one: it validated nothing"
    )
    if proven.get("etag"):
        text += "; their content was proven by the ETag (the MD5 of the bytes sent) instead"
    if proven.get("none"):
        text += (
            f"; {proven['none']:,} have no proof at all (an ETag that is not an MD5): "
            "run 'desimirror verify --checksum --reread'"
        )
    return f"{text} ({how})" if how else text


def _clock_text(wall: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(wall))
