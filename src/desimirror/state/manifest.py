"""The mirror's one state file: a SQLite manifest where every pipeline stage meets.

Crawl writes ``entries``; plan writes ``batches``; upload writes ``uploads`` and
``failures``; verify and status only read. No stage imports another: they share this
state, through :class:`Manifest`'s named methods and nothing else. The db runs in WAL mode
so a ``status`` can read while an upload writes, and every write happens inside
:meth:`Manifest.atomic` so a kill -9 leaves either the old or the new state, never half of
one.

Paths are relative to the crawled root, ``/``-separated, UTF-8; the root itself is the
entry with path ``""``. Because every subtree is a contiguous range of paths in byte order,
"everything under directory D" is the range ``D/`` .. ``D0`` (``0`` follows ``/``), which an
index answers without recursion.

:class:`Manifest` is put together from one class per group of tables, each in its own
module: :mod:`~desimirror.state.db` (the file, the lock, transactions, ``meta``),
:mod:`~desimirror.state.entries` (crawls and the tree), :mod:`~desimirror.state.batches`
(the plan), :mod:`~desimirror.state.uploads` (what the bucket holds, failures, runs) ,
:mod:`~desimirror.state.checksum_claims` (the release's published checksums) and
:mod:`~desimirror.state.target` (the bucket and layout a mirror is pinned to). The records
and the vocabulary are in :mod:`~desimirror.state.records`; stages import all of it from
here.
"""

from __future__ import annotations

from desimirror.state.batches import BatchTables
from desimirror.state.checksum_claims import PublishedClaims
from desimirror.state.db import APP_ID, SCHEMA_VERSION, StateDb, wal_checkpointer
from desimirror.state.records import (
    CHANGED,
    CORRUPT,
    FAILED,
    FAILURE_REASONS,
    MISMATCH,
    NOT_DONE,
    OPEN_FAILURES,
    PROOFS,
    UNSAFE,
    UPLOADABLE,
    Entry,
    Kind,
    LinkKind,
    RunTotals,
    UploadRecord,
    roll_up,
    subtree_range,
)
from desimirror.state.target import TargetPin
from desimirror.state.uploads import UploadTables

__all__ = [
    "APP_ID",
    "CHANGED",
    "CORRUPT",
    "FAILED",
    "FAILURE_REASONS",
    "MISMATCH",
    "NOT_DONE",
    "OPEN_FAILURES",
    "PROOFS",
    "SCHEMA_VERSION",
    "UNSAFE",
    "UPLOADABLE",
    "Entry",
    "Kind",
    "LinkKind",
    "Manifest",
    "RunTotals",
    "StateDb",
    "UploadRecord",
    "roll_up",
    "subtree_range",
    "wal_checkpointer",
]


class Manifest(BatchTables, UploadTables, PublishedClaims, TargetPin):
    """A connection to one mirror's state db, with every table's methods. Use
    :meth:`open`; close when done."""
