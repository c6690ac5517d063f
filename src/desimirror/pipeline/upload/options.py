"""What ``desimirror upload`` is asked to do, and what one run did."""

from __future__ import annotations

from dataclasses import dataclass, field

from desimirror.storage import transfer
from desimirror.storage.health import DEFAULT_GIVE_UP_SECONDS
from desimirror.storage.transfer import S3Target
from desimirror.units import MiB

ADOPT_MODES = ("checksum", "size", "none")


@dataclass(frozen=True)
class UploadOptions:
    """Everything ``desimirror upload`` was asked to do."""

    target: S3Target
    prefix: str | None = None
    remap: tuple[str, ...] = ()
    backend: str = transfer.DEFAULT_BACKEND
    workers: int = 64
    max_batches: int | None = None
    max_attempts: int = 4
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    #: Extra rounds a file may spend being refused by throttling, on top of its attempts.
    throttle_rounds: int = 30
    part_size: int = 50 * MiB
    adopt: str = "checksum"
    delete: bool = False
    hash_threads: int = 4
    #: s5cmd runs at most this much of a batch at once, hashing the next chunk meanwhile.
    chunk_files: int = 2000
    chunk_bytes: int = 8 << 30
    #: Give up (exit 4) after this long in which the store answered nothing but failures.
    give_up_after: float = DEFAULT_GIVE_UP_SECONDS
    #: Send on the workers of this Dask scheduler (tcp://HOST:8786) instead of here.
    scheduler: str | None = None


@dataclass
class UploadSummary:
    """What one run did; the JSON report of ``desimirror upload --json``."""

    bucket: str
    backend: str
    adopt_mode: str = "checksum"
    batches_total: int = 0
    batches_done: int = 0
    batches_run: int = 0
    files_sent: int = 0
    bytes_sent: int = 0
    files_adopted: int = 0
    bytes_adopted: int = 0
    files_failed: int = 0
    files_changed: int = 0
    files_unsafe: int = 0
    files_corrupt: int = 0
    files_gone: int = 0
    bytes_gone: int = 0
    files_deleted: int = 0
    pending_files: int = 0
    pending_bytes: int = 0
    retries: int = 0
    backoff_seconds: float = 0.0
    bytes_hashed: int = 0
    hash_seconds: float = 0.0
    seconds: float = 0.0
    stopped_early: bool = False
    concurrency: dict[str, int] = field(default_factory=dict)
    checksums: dict[str, object] = field(default_factory=dict)
    #: How each file confirmed in this run was tied to its bytes (proof -> files).
    proven_by: dict[str, int] = field(default_factory=dict)
    #: Where the transfers ran: "here", or the Dask cluster ("Dask at tcp://... (N workers)").
    ran_on: str = "here"
    #: worker -> [files, bytes] each Dask worker sent (empty on one node).
    workers: dict[str, list[int]] = field(default_factory=dict)
    #: CPU seconds of this process and of the workers' processes while sending (cluster).
    cpu_seconds: float = 0.0
    worker_cpu_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.bytes_sent / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        report = dict(self.__dict__)
        report["bytes_per_second"] = round(self.rate, 1)
        report["backoff_seconds"] = round(self.backoff_seconds, 3)
        report["hash_seconds"] = round(self.hash_seconds, 3)
        report["cpu_seconds"] = round(self.cpu_seconds, 3)
        report["worker_cpu_seconds"] = round(self.worker_cpu_seconds, 3)
        report["workers"] = {w: {"files": f, "bytes": b} for w, (f, b) in self.workers.items()}
        return report


def incomplete_message(summary: UploadSummary) -> str:
    parts = []
    if summary.files_failed:
        parts.append(f"{summary.files_failed} failed")
    if summary.files_corrupt:
        parts.append(f"{summary.files_corrupt} do not match their published SHA-256 (corrupt)")
    if summary.files_changed:
        parts.append(f"{summary.files_changed} changed since the crawl (re-crawl)")
    if summary.files_unsafe:
        parts.append(f"{summary.files_unsafe} refused (symlink outside the tree)")
    first = f"; first: {summary.errors[0]}" if summary.errors else ""
    return f"upload incomplete: {', '.join(parts)} of this run's files{first}"
