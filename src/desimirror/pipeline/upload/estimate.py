"""``desimirror estimate``: the requests, hours and request cost of the upload as planned.

Counted from the state db alone, file by file, as the upload would make its requests into a
bucket that does not yet hold the files (a fresh mirror):

* one HeadBucket before anything (the upload's check that the bucket can be used);
* per batch, the lookup of what the bucket already holds (:mod:`desimirror.storage.lookup`):
  one LIST of the batch's shared directory, or a HEAD per key for a batch of fewer than
  :data:`~desimirror.storage.lookup.LIST_MIN_KEYS` files;
* per file, one PUT up to the part size, else CreateMultipartUpload, one UploadPart per
  part and CompleteMultipartUpload (the rule both backends follow), and with
  ``--backend native`` a HEAD of each completed multipart object (its composite checksum);
* with the native and crt backends, once if any file is multipart, the probe of whether the
  store checks part checksums (:data:`PART_PROBE`);
* with ``--backend s5cmd``, whose objects' ETags are read back to prove them: per chunk of
  at most ``chunk_files`` files, the same lookup again, one LIST page per 1,000 keys (a HEAD
  each below the lookup's threshold). This part is an approximation: a listing pages
  through what the shared directory holds, which may be more than the chunk.

Objects already in the bucket (a resumed mirror, objects to adopt) make the lookups page
through them, and adopted files need no PUT: the estimate is then an upper bound on PUTs.

Cost: PUT, COPY, POST and LIST requests at one price, GET and HEAD at another, DELETE and
an abort free, as S3 bills them; data transfer into S3 is free. The default prices are
AWS S3 Standard's list prices in us-east-1 (:data:`DEFAULT_PRICES`, with the date they were
read); every one can be overridden.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from desimirror.errors import UsageError
from desimirror.state.manifest import Manifest
from desimirror.storage.lookup import LIST_MIN_KEYS

#: USD per request: (PUT, COPY, POST, LIST), (GET, HEAD), (DELETE, abort: free). S3 Standard,
#: us-east-1.
DEFAULT_PRICES = {"put": 0.005 / 1000, "get": 0.0004 / 1000, "free": 0.0}
PRICES_AS_OF = "2026-12-02"
PRICES_SOURCE = "AWS S3 Standard list prices, us-east-1 (aws.amazon.com/s3/pricing)"
#: Which price each kind of request is billed at.
BILLED_AS = {
    "head_bucket": "get",
    "list": "put",
    "head": "get",
    "put": "put",
    "multipart_create": "put",
    "multipart_part": "put",
    "multipart_complete": "put",
    "multipart_abort": "free",
}
#: The native and crt backends ask the store once a run, before the first large file,
#: whether it checks part checksums: a multipart upload with a wrong part, then the right
#: one, aborted (``NativeBackend._probe_parts``).
PART_PROBE = {"multipart_create": 1, "multipart_part": 2, "multipart_abort": 1}
LIST_PAGE = 1000


@dataclass
class Estimate:
    """The ``--json`` report of ``desimirror estimate``."""

    backend: str
    part_size: int
    gbps: float
    workers: int
    request_ms: float
    batches: int = 0
    files: int = 0
    bytes: int = 0
    files_multipart: int = 0
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BILLED_AS, 0))
    requests_total: int = 0
    hours_at_bandwidth: float = 0.0
    hours_request_bound: float = 0.0
    hours: float = 0.0
    prices: dict[str, float] = field(default_factory=dict)
    prices_as_of: str = PRICES_AS_OF
    prices_source: str = PRICES_SOURCE
    cost_usd: dict[str, float] = field(default_factory=dict)
    cost_usd_total: float = 0.0
    assumes: str = "a bucket that holds none of the pending files yet"

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def estimate(
    manifest: Manifest,
    *,
    backend: str = "s5cmd",
    part_size: int = 50 << 20,
    gbps: float = 10.0,
    workers: int = 64,
    request_ms: float = 30.0,
    prices: dict[str, float] | None = None,
    chunk_files: int = 2000,
    chunk_bytes: int = 8 << 30,
) -> Estimate:
    """Count the requests of uploading every pending file of the plan; see the module doc."""
    batches = list(manifest.iter_batches())
    if not batches:
        raise UsageError(f"{manifest.path} has no plan: run 'desimirror plan --db ...' first")
    report = Estimate(backend, part_size, gbps, workers, request_ms)
    report.prices = {**DEFAULT_PRICES, **(prices or {})}
    requests = report.requests
    requests["head_bucket"] = 1
    for _batch_id, _nbytes, _nfiles, paths in batches:
        sizes = [e.size for e in manifest.pending_in(paths)]
        if not sizes:
            continue
        report.batches += 1
        _lookup(requests, len(sizes))
        for size in sizes:
            _send(report, size)
        if backend == "s5cmd":
            for chunk in _chunks(sizes, chunk_files, chunk_bytes):
                _lookup(requests, chunk, pages=True)
    if report.files_multipart and backend != "s5cmd":
        for kind, n in PART_PROBE.items():
            requests[kind] += n
    _totals(report)
    return report


def _lookup(requests: dict[str, int], keys: int, *, pages: bool = False) -> None:
    """One lookup of ``keys`` keys: a HEAD each when few, else LIST (one, or one a page)."""
    if keys < LIST_MIN_KEYS:
        requests["head"] += keys
    else:
        requests["list"] += -(-keys // LIST_PAGE) if pages else 1


def _send(report: Estimate, size: int) -> None:
    report.files += 1
    report.bytes += size
    if size > report.part_size:
        report.files_multipart += 1
        report.requests["multipart_create"] += 1
        report.requests["multipart_part"] += -(-size // report.part_size)
        report.requests["multipart_complete"] += 1
        if report.backend == "native":  # it reads the completed object's checksum back
            report.requests["head"] += 1
    else:
        report.requests["put"] += 1


def _chunks(sizes: list[int], max_files: int, max_bytes: int) -> list[int]:
    """The number of files in each chunk s5cmd is given (files and bytes bounded)."""
    counts, files, nbytes = [], 0, 0
    for size in sizes:
        if files and (files >= max_files or nbytes + size > max_bytes):
            counts.append(files)
            files, nbytes = 0, 0
        files += 1
        nbytes += size
    if files:
        counts.append(files)
    return counts


def _totals(report: Estimate) -> None:
    report.requests_total = sum(report.requests.values())
    report.hours_at_bandwidth = report.bytes * 8 / (report.gbps * 1e9) / 3600
    report.hours_request_bound = (
        report.requests_total * report.request_ms / 1000 / max(report.workers, 1) / 3600
    )
    report.hours = max(report.hours_at_bandwidth, report.hours_request_bound)
    for kind, n in report.requests.items():
        report.cost_usd[kind] = round(n * report.prices[BILLED_AS[kind]], 6)
    report.cost_usd_total = round(sum(report.cost_usd.values()), 4)


def parse_price(text: str) -> float:
    """``0.005/1000`` (USD per 1,000 requests) or ``0.000005`` (per request) -> per request."""
    amount, sep, per = text.strip().lstrip("$").partition("/")
    try:
        value = float(amount) / (float(per.replace(",", "")) if sep else 1.0)
    except (ValueError, ZeroDivisionError):
        raise UsageError(
            f"invalid price {text!r}: use USD per N requests, e.g. 0.005/1000"
        ) from None
    if value < 0 or value != value:
        raise UsageError(f"invalid price {text!r}: a price is 0 or more")
    return value
