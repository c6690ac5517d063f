"""Error classes, each with its own exit status, so scripts can tell failures apart.

Every error a user can cause is raised as a :class:`DesimirrorError` with a one-line
message; the CLI prints that line and exits with the class's status, never a traceback.
"""

from __future__ import annotations

import os
import re


class DesimirrorError(Exception):
    """A failure the user can understand and act on: printed as one line.

    ``report`` carries the machine-readable outcome of work that ran before the failure,
    so ``--json`` callers still get the counts of an incomplete upload or verify.
    """

    exit_code = 1

    def __init__(self, message: str, *, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report


class UsageError(DesimirrorError):
    """Bad arguments: a size that does not parse, a remap that collides, a missing root."""

    exit_code = 2


class StateError(DesimirrorError):
    """The state db is corrupt, foreign or from another mirror; it is never overwritten."""

    exit_code = 3


class RemoteError(DesimirrorError):
    """The object store cannot be used: unreachable, missing bucket, refused credentials."""

    exit_code = 4


class IncompleteError(DesimirrorError):
    """The work ran but did not finish: files failed, or the bucket does not match."""

    exit_code = 5


_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_SIGNATURE = re.compile(r"(Signature|Credential|X-Amz-Security-Token)=[^&\s\"']+", re.I)


def redact(text: str, environ: dict[str, str] | None = None) -> str:
    """Remove credentials from text that may reach a log, the state db or the terminal.

    Error messages from S3 clients can echo request URLs (presigned parameters) or, on a
    misconfiguration, the key itself; everything stored or printed passes through here.
    """
    env = os.environ if environ is None else environ
    for name in _SECRET_ENV:
        value = env.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return _SIGNATURE.sub(lambda m: m.group(1) + "=***", text)
