"""Error classes, each with its own exit status, so scripts can tell failures apart.

Every error a user can cause is raised as a :class:`DesimirrorError` with a one-line
message; the CLI prints that line and exits with the class's status, never a traceback.
"""

from __future__ import annotations

import os
import re
import sqlite3


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


# SQLite's primary result codes (sqlite3.h) for the failures a user can act on.
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL = 8, 10, 11, 13


def sqlite_failure(
    exc: sqlite3.Error, db: str | os.PathLike[str] | None = None
) -> StateError | None:
    """One line for a failure of the state db itself: full, read-only, I/O error, corrupt;
    None for other SQLite errors (the caller says what it was doing).

    A failed transaction is rolled back whole, so what was committed before is kept; the
    message says so, and how to go on. The cause is looked for along the exception's
    context too (a ROLLBACK that fails after a full disk hides the "disk is full").
    """
    where = f"the state db {os.fspath(db)}" if db is not None else "the state db"
    code = _sqlite_code(exc)
    kept = "everything committed before is kept"
    if code == _SQLITE_FULL:
        return StateError(
            f"the filesystem holding {where} is full (database or disk is full): {kept} "
            "(an upload commits what it confirmed every second, and the next run adopts "
            "what it sent since); free space there and run the same command again"
        )
    if code == _SQLITE_READONLY:
        return StateError(
            f"{where} cannot be written (SQLite: {exc}): check the permissions of the db and "
            f"of its directory; {kept}"
        )
    if code == _SQLITE_IOERR:
        return StateError(f"{where} could not be read or written (SQLite: {exc}): {kept}")
    if code == _SQLITE_CORRUPT:
        return StateError(f"{where} is damaged (SQLite: {exc}): restore it from a copy")
    return None


def _sqlite_code(exc: BaseException | None) -> int | None:
    """The primary SQLite result code of ``exc`` or of the errors it arose from."""
    seen = 0
    while exc is not None and seen < 8:
        code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
        if code is None and isinstance(exc, sqlite3.Error):
            code = _code_from_text(str(exc))
        if code is not None and code & 0xFF in _ACTIONABLE:
            return code & 0xFF
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


_ACTIONABLE = {_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL}
_MESSAGES = {
    "database or disk is full": _SQLITE_FULL,
    "attempt to write a readonly database": _SQLITE_READONLY,
    "disk i/o error": _SQLITE_IOERR,
    "database disk image is malformed": _SQLITE_CORRUPT,
}


def _code_from_text(text: str) -> int | None:
    return next((code for words, code in _MESSAGES.items() if words in text.lower()), None)


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
