"""Trying again: the one retry mechanism (tenacity underneath), and its one backoff.

Every call that may fail for a passing reason (a 503, a reset connection, a part of a
multipart upload) is tried through :func:`retry_call`: at most ``attempts`` times, while
``retry_on`` says the failure is transient, waiting :func:`backoff_delay` between attempts;
the last failure is raised as it was. The uploader's rounds over a batch (whole files, not
calls) wait the same :func:`backoff_delay`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import tenacity

T = TypeVar("T")


def backoff_delay(attempt: int, base: float, cap: float = 60.0, *, jitter: bool = True) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): ``base`` doubled
    each time, capped at ``cap``, times a jitter in [0.5, 1.5) so that many clients that
    failed together do not come back together."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay * (0.5 + random.random()) if jitter else delay


def retry_call(
    call: Callable[[], T],
    *,
    attempts: int,
    base: float,
    retry_on: Callable[[BaseException], bool],
    cap: float = 60.0,
    jitter: bool = True,
    sleep: Callable[[float], Any] = time.sleep,
) -> T:
    """``call()``, tried up to ``attempts`` times while its failures are transient."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, attempts)),
        wait=lambda state: backoff_delay(state.attempt_number, base, cap, jitter=jitter),
        retry=tenacity.retry_if_exception(retry_on),
        sleep=sleep,
        reraise=True,
    )
    return retrying(call)
