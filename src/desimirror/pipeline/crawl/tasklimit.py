"""How many crawl tasks to keep in flight: as many as make the crawl faster, no more.

Not :class:`desimirror.storage.throttle.Concurrency`, which backs transfers off when the
store throttles; this one climbs the rate of work a filesystem gives.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: How the number of tasks in flight is tuned (see TaskLimit): the measuring window;
#: windows a new limit is on trial; the rise in rate that keeps a higher limit; the
#: share of the rate a lower limit must keep; windows to wait after a failed rise (doubled
#: after each, up to the most), and between tries lower.
WINDOW_SECONDS = 0.05
TRIAL_WINDOWS = 2
GROW_GAIN = 1.1
SHRINK_KEEP = 0.9
HOLD_WINDOWS = 4
MAX_HOLD_WINDOWS = 64
PROBE_WINDOWS = 20
#: A directory listed counts as this many entries of work (an open, a listing, a close).
DIR_WEIGHT = 8


class TaskLimit:
    """How many tasks to keep in flight: as many as make the crawl faster, no more.

    Threads help only while they wait on the filesystem. On a warm local tree every task
    in flight beyond one makes the crawl slower (the threads spend their time handing the
    GIL to each other: several times slower at 8 or 64 in flight); with a millisecond of
    latency per call the same crawl wants 64 in flight (bench/CRAWL.md has the figures).
    Neither CPU load nor CPU per entry tells the two apart reliably (on FUSE the kernel's
    share per call swings fivefold), so the limit climbs the one measure that
    matters, the rate of work done (entries, and directories weighted by their extra
    calls). Each window (:data:`WINDOW_SECONDS`, and at least as many tasks as the
    limit) gives a rate. While work waits for a slot, a higher limit is tried for
    :data:`TRIAL_WINDOWS` windows and kept only if the rate rose by
    :data:`GROW_GAIN` over the windows before (the first step and those after a nearly
    linear gain are fourfold, the others twofold; after a failed rise it waits, twice as
    long each time); every :data:`PROBE_WINDOWS` windows half the limit is tried and
    kept if the rate holds. Fixed at ``most`` for executors other than the crawl's
    own threads, which may have reasons of their own (a cluster's workers).
    """

    def __init__(
        self, most: int, adaptive: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.most = most
        self.adaptive = adaptive
        self.clock = clock
        self.limit = 1 if adaptive else most
        self.limited = False  # work waited for a free slot during this window
        self.rates: list[float] = []  # the windows' rates since the limit last changed
        self.before: tuple[int, float] | None = None  # on trial: (old limit, its rate)
        self.step = 4
        self.hold = 0  # windows to wait before trying higher again
        self.backoff = HOLD_WINDOWS  # the next hold, doubled by every failed rise
        self.started, self.work, self.tasks = clock(), 0.0, 0
        self.waited = False

    def update(self, entries: int, listed: int) -> None:
        """Count a finished task's work; at the end of a window, adjust the limit."""
        if not self.adaptive:
            return
        self.work += entries + DIR_WEIGHT * listed
        self.tasks += 1
        self.waited |= self.limited
        now = self.clock()
        elapsed = now - self.started
        if elapsed < WINDOW_SECONDS or self.tasks < self.limit:
            return
        self.rates.append(self.work / elapsed)
        waited, self.waited, self.limited = self.waited, False, False
        self.started, self.work, self.tasks = now, 0.0, 0
        self.hold -= 1
        if self.before is not None:
            if len(self.rates) >= TRIAL_WINDOWS:
                self._judge(waited)
        elif waited and self.limit < self.most and self.hold <= 0 and len(self.rates) >= 2:
            self._try(min(self.most, self.limit * self.step))
        elif len(self.rates) >= PROBE_WINDOWS and self.limit > 1:
            self._try(self.limit // 2)

    def _rate(self) -> float:
        recent = self.rates[-TRIAL_WINDOWS:]
        return sum(recent) / len(recent)

    def _try(self, limit: int) -> None:
        self.before = (self.limit, self._rate())
        self.limit = limit
        self.rates = []

    def _judge(self, waited: bool) -> None:
        (before, before_rate), rate = self.before or (self.limit, 0.0), self._rate()
        self.before = None
        if self.limit > before:  # tried higher
            gain = rate / max(before_rate, 1e-9)
            if gain < GROW_GAIN:
                self.limit, self.step, self.hold = before, 2, self.backoff
                self.backoff = min(2 * self.backoff, MAX_HOLD_WINDOWS)
                self.rates = []
                return
            self.backoff = HOLD_WINDOWS
            self.step = 4 if gain > 0.7 * (self.limit / before) else 2
            if waited and self.limit < self.most:
                self._try(min(self.most, self.limit * self.step))
        elif rate < SHRINK_KEEP * before_rate:  # tried lower, and it cost
            self.limit = before
            self.rates = []
