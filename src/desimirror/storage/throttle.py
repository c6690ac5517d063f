"""Adaptive concurrency: fewer requests in flight while the store says "slow down".

An S3 endpoint that answers 503 SlowDown is asking for fewer requests per second. Retrying
each refused request after a pause (backoff) is not enough when dozens of workers do it at
once: the aggregate rate stays the same. So the uploader also lowers how many transfers run
at once, the way TCP reacts to loss (additive increase, multiplicative decrease):

* each throttling answer halves the limit, at most once per "round" (as many completions
  as the limit allowed in flight), so one burst of 503s from requests already in flight
  counts once and does not collapse the limit to 1;
* every round of clean completions (as many as the limit) adds one worker: recovery is
  slow on purpose.

The limit bounds the transfers in flight: the native backend takes a slot per file from
:meth:`Concurrency.slot`; the s5cmd backend gets the current limit as ``--numworkers`` for
its next run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Concurrency:
    """A resizable limit on transfers in flight, lowered on throttling (AIMD)."""

    def __init__(self, maximum: int, minimum: int = 1) -> None:
        self.maximum = max(1, int(maximum))
        self.minimum = max(1, min(int(minimum), self.maximum))
        self._limit = float(self.maximum)
        self._in_flight = 0
        self._since_cut = self.maximum  # completions since the last decrease
        self._credit = 0  # clean completions towards the next increase
        self._cond = threading.Condition()
        self.throttle_events = 0
        self.decreases = 0
        self.lowest = self.maximum

    @property
    def limit(self) -> int:
        with self._cond:
            return int(self._limit)

    def throttled(self) -> None:
        """The store asked us to slow down: halve the limit (once per round)."""
        with self._cond:
            self.throttle_events += 1
            if self._since_cut < int(self._limit):
                return
            self._limit = max(float(self.minimum), float(int(self._limit) // 2))
            self._since_cut = 0
            self._credit = 0
            self.decreases += 1
            self.lowest = min(self.lowest, int(self._limit))

    def completed(self, ok: bool = True) -> None:
        """One transfer ended without throttling; ``ok`` ones grow the limit slowly."""
        with self._cond:
            self._since_cut += 1
            if ok and self._limit < self.maximum:
                self._credit += 1
                if self._credit >= int(self._limit):  # a whole round went well
                    self._limit = min(float(self.maximum), self._limit + 1)
                    self._credit = 0
                    self._cond.notify_all()

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``limit`` transfer slots for the duration of a transfer."""
        with self._cond:
            while self._in_flight >= int(self._limit):
                self._cond.wait(timeout=1.0)
            self._in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def as_dict(self) -> dict[str, int]:
        return {
            "workers_max": self.maximum,
            "workers_now": self.limit,
            "workers_lowest": self.lowest,
            "throttle_events": self.throttle_events,
            "concurrency_decreases": self.decreases,
        }
