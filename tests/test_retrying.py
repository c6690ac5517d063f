"""The one retry mechanism: how many attempts, which failures, how long between them."""

from __future__ import annotations

import pytest

from desimirror.retrying import backoff_delay, retry_call


class Flaky:
    """Fails ``failures`` times with ``error``, then returns "done"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def test_transient_failures_are_tried_again_with_growing_jittered_waits() -> None:
    waits: list[float] = []
    call = Flaky(3, TimeoutError("reset"))
    result = retry_call(call, attempts=4, base=1.0, retry_on=lambda _: True, sleep=waits.append)
    assert (result, call.calls) == ("done", 4)
    for attempt, wait in enumerate(waits, start=1):
        assert 0.5 * 2 ** (attempt - 1) <= wait < 1.5 * 2 ** (attempt - 1)


def test_the_last_failure_is_raised_as_it_was_after_the_last_attempt() -> None:
    waits: list[float] = []
    call = Flaky(10, TimeoutError("still down"))
    with pytest.raises(TimeoutError, match="still down"):
        retry_call(call, attempts=3, base=0.1, retry_on=lambda _: True, sleep=waits.append)
    assert call.calls == 3
    assert len(waits) == 2


def test_a_failure_that_is_not_transient_is_raised_at_once() -> None:
    waits: list[float] = []
    call = Flaky(1, PermissionError("denied"))
    with pytest.raises(PermissionError):
        retry_call(
            call,
            attempts=5,
            base=0.1,
            retry_on=lambda exc: not isinstance(exc, PermissionError),
            sleep=waits.append,
        )
    assert (call.calls, waits) == (1, [])


def test_the_backoff_is_capped_and_can_be_exact() -> None:
    assert backoff_delay(1, 0.5, 10.0, jitter=False) == 0.5
    assert backoff_delay(4, 0.5, 10.0, jitter=False) == 4.0
    assert backoff_delay(30, 0.5, 10.0, jitter=False) == 10.0
    assert 5.0 <= backoff_delay(30, 0.5, 10.0) < 15.0
