"""boto3 S3 clients for an :class:`S3Target`, and S3 failures turned into one-line errors.

Every part of desimirror that talks to S3 through Python (the native backend, the bucket
check before an upload, the listing behind ``verify``) builds its client here, so the
timeouts, retry policy, addressing style and endpoint resolution are the same everywhere
and agree with what the s5cmd backend is told.

Retries: botocore's ``standard`` mode keeps a per-client retry quota that sustained faults
drain, and it does not retry errors raised while a response body is read. So clients here
make only a few attempts per request; the uploader owns retries per file, and
:func:`list_objects` resumes a listing from its last page on its own.
"""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from desimirror.errors import RemoteError, UsageError, redact
from desimirror.retrying import retry_call
from desimirror.storage.transfer.base import S3Target

#: The region a client signs for when none is configured: where DESI's public bucket
#: (``desidata``) lives. Other stores (SeaweedFS, Ceph) accept any region.
DEFAULT_REGION = "us-west-2"
CREDENTIALS_HINT = "check credentials (AWS_PROFILE / AWS_ACCESS_KEY_ID)"

# S3 error codes that a later attempt cannot fix: the request itself or its credentials are
# wrong. Anything not listed with a 4xx status is treated the same way (see retryable_error).
_FATAL_CODES = frozenset(
    {
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "EntityTooLarge",
        "InvalidAccessKeyId",
        "InvalidArgument",
        "InvalidBucketName",
        "InvalidObjectState",
        "InvalidRequest",
        "KeyTooLongError",
        "MethodNotAllowed",
        "NoSuchBucket",
        "NotImplemented",
        "SignatureDoesNotMatch",
        "UnauthorizedAccess",
    }
)
# Codes that come with a 4xx status but are transient: throttling, a slow client, a body
# that arrived damaged (the next attempt re-reads the file), credentials being refreshed.
_TRANSIENT_CODES = frozenset(
    {
        "BadDigest",
        "ExpiredToken",
        "IncompleteBody",
        "InvalidDigest",
        "OperationAborted",
        "RequestLimitExceeded",
        "RequestTimeout",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "XAmzContentSHA256Mismatch",
    }
)
# Codes a store uses to ask for fewer requests: the uploader lowers its concurrency.
_THROTTLE_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
    }
)
_DENIED_CODES = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
)
_MISSING_BUCKET_CODES = frozenset({"404", "NoSuchBucket", "NotFound"})
_MAX_MESSAGE = 300
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_ENDPOINT_SCHEMES = ("http", "https")


def check_endpoint_url(url: str | None, source: str = "--endpoint-url") -> str | None:
    """``url`` if it is a usable S3 endpoint (``http(s)://HOST[:PORT][/PATH]``), else a
    one-line :class:`UsageError` naming where it came from (``source``).

    botocore and s5cmd each fail on a malformed endpoint in their own way, deep inside a
    request (a traceback, an ``EndpointResolutionError``, a silent default), so every
    command checks it here, once, before it opens anything.
    """
    if url is None or not url.strip():
        return None
    text = url.strip()
    parts = urllib.parse.urlsplit(text)
    problem = None
    if parts.scheme.lower() not in _ENDPOINT_SCHEMES:
        problem = "it must start with http:// or https://"
    elif not parts.hostname:
        problem = "it names no host"
    elif parts.query or parts.fragment or parts.username or parts.password:
        problem = "it must hold no query, fragment or credentials"
    else:
        try:
            port = parts.port  # raises on a port that is not a number in range
        except ValueError:
            port = 0
        if port == 0:
            problem = "its port is not a number from 1 to 65535"
    if problem:
        shown = redact(text) if not (parts.username or parts.password) else "(with credentials)"
        raise UsageError(
            f"invalid S3 endpoint {shown!r} from {source}: {problem}; "
            "expected http(s)://HOST[:PORT], e.g. http://127.0.0.1:9000"
        )
    return text


def without_userinfo(url: str) -> str:
    """``url`` without any ``user:password@``: what may be stored and shown."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def parse_bucket_url(url: str) -> tuple[str, str]:
    """``s3://NAME[/PREFIX]`` (or a bare ``NAME[/PREFIX]``) → (NAME, PREFIX without slashes).

    The one parser of bucket URLs, for the pipeline and the access commands alike.
    """
    parts = urllib.parse.urlsplit(url.strip(), allow_fragments=False)
    if parts.scheme == "s3":
        name, prefix = parts.netloc, parts.path
        if parts.query:
            prefix += "?" + parts.query
    elif not parts.scheme and not parts.netloc:
        name, _, prefix = parts.path.partition("/")
    else:
        name, prefix = "", ""
    if not _BUCKET_NAME.match(name):
        raise UsageError(
            f"invalid bucket {url!r}: expected s3://NAME[/PREFIX] with a 3-63 character bucket name"
        )
    return name, prefix.strip("/")


def endpoint_url(target: S3Target) -> str | None:
    """The endpoint every client of ``target`` must use, or None for AWS itself.

    boto3 reads ``AWS_ENDPOINT_URL`` on its own but s5cmd does not, so both backends are
    given the resolved URL explicitly: they must never write to two different stores.
    """
    if target.endpoint_url:
        return check_endpoint_url(target.endpoint_url)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = os.environ.get(name, "").strip()
        if value:
            return check_endpoint_url(value, f"${name}")
    return None


_loader_lock = threading.Lock()
_loader: Any = None


def aws_session() -> Any:
    """A new boto3 session (the environment's credentials, profile and region as they are
    now), sharing one botocore data loader with every other session of the process.

    Loading the S3 service model is most of a client's creation (about 60 ms of CPU here,
    against 13 ms with the model already loaded). A run makes several clients (the
    bucket check, the backend, the manifest's publisher), and every one is part of a
    command's fixed cost, which on a short transfer is a fair part of its time. The model
    is static data; the session itself is not shared, so credentials are still read fresh.
    """
    global _loader
    import boto3
    import botocore.session

    core = botocore.session.Session()
    with _loader_lock:
        if _loader is None:
            _loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _loader)
    return boto3.session.Session(botocore_session=core)


def make_client(
    target: S3Target,
    *,
    max_pool_connections: int = 10,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    max_attempts: int = 3,
    retry_mode: str = "standard",
    validate_response_checksums: bool = True,
) -> Any:
    """A boto3 S3 client for ``target``; credentials come from the standard AWS chain.

    Custom endpoints get path-style addressing (what s5cmd and most S3-compatible stores
    expect; virtual-host names need wildcard DNS). Public targets are read unsigned, so no
    credential lookup happens at all.

    ``validate_response_checksums=False`` leaves a GET's checksum to the caller (botocore
    would otherwise hash every body a second time when the caller proves it already).
    """
    from botocore import UNSIGNED
    from botocore.config import Config

    session = aws_session()
    region = target.region or session.region_name or DEFAULT_REGION
    url = endpoint_url(target)
    options: dict[str, Any] = {
        "region_name": region,
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "max_pool_connections": max(1, max_pool_connections),
        "retries": {"mode": retry_mode, "max_attempts": max(1, max_attempts)},
        "s3": {"addressing_style": "path" if url else "auto"},
    }
    if target.no_sign_request:
        options["signature_version"] = UNSIGNED
    if not validate_response_checksums:
        options["response_checksum_validation"] = "when_required"
    return session.client("s3", endpoint_url=url, config=Config(**options))


def one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    """``text`` squeezed onto one short line with credentials removed, fit for the state db.

    A line that is too long loses its middle, not its end: errors read "PUT s3://KEY:
    CAUSE", and a key can be 1,024 bytes, so cutting the end would drop the cause.
    """
    text = re.sub(r"\s+", " ", str(text)).strip()
    text = redact(text.encode("utf-8", "backslashreplace").decode("utf-8"))  # lone surrogates
    if len(text) <= limit:
        return text
    tail = limit // 2
    return text[: limit - tail - 5] + " ... " + text[-tail:]


def retryable_error(code: str | None, status: int | None) -> bool:
    """Whether another attempt of a request that failed with this S3 code/status can succeed."""
    if code in _TRANSIENT_CODES:
        return True
    if code in _FATAL_CODES:
        return False
    if status is None:
        return True
    return not (400 <= status < 500) or status in (408, 429)


def is_throttle(code: str | None, status: int | None) -> bool:
    """Whether a refusal asks the client to slow down (503 SlowDown, 429, Throttling...)."""
    return code in _THROTTLE_CODES or status in (429, 503)


def error_code(exc: BaseException) -> tuple[str | None, int | None]:
    """The S3 error code and HTTP status of a botocore ClientError, else (None, None)."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        code, status, _ = _client_error_parts(exc)
        return code, status
    return None, None


def _client_error_parts(exc: Any) -> tuple[str, int | None, str]:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = str(error.get("Code") or status or "Unknown")
    message = str(error.get("Message") or "")
    return code, status, message


def describe_error(exc: BaseException) -> tuple[str, bool]:
    """A short one-line description of ``exc`` and whether retrying the file may help.

    Local problems (the file vanished, cannot be read) and refusals (credentials, a missing
    bucket) are final; network trouble, throttling and 5xx replies are worth another try.
    """
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        code, status, message = _client_error_parts(exc)
        text = f"{code} ({status})" if status else code
        if message and message not in (code, str(status)):
            text += f": {message}"
        return one_line(text), retryable_error(code, status)
    if isinstance(exc, bx.NoCredentialsError):
        return "no AWS credentials found: " + CREDENTIALS_HINT, False
    if isinstance(exc, bx.PartialCredentialsError | bx.ParamValidationError):
        return one_line(str(exc)), False
    if isinstance(exc, bx.EndpointConnectionError):
        return one_line(f"cannot reach S3 endpoint {exc.kwargs.get('endpoint_url', '')}"), True
    if isinstance(exc, bx.BotoCoreError):
        return one_line(f"{type(exc).__name__}: {exc}"), True
    if isinstance(exc, FileNotFoundError):
        return "local file not found", False
    if isinstance(exc, IsADirectoryError):
        return "local path is a directory", False
    if isinstance(exc, PermissionError):
        return "local file not readable (permission denied)", False
    if isinstance(exc, OSError):
        return one_line(f"local read error: {exc.strerror or exc}"), True
    return one_line(f"{type(exc).__name__}: {exc}"), True


def _endpoint_of(client: Any) -> str:
    return str(getattr(client.meta, "endpoint_url", "") or "the default AWS endpoint")


def bucket_error(client: Any, bucket: str, exc: BaseException) -> RemoteError:
    """The one-line :class:`RemoteError` for a failure to use ``bucket`` at all."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        return RemoteError(f"cannot reach S3 endpoint {_endpoint_of(client)}")
    if isinstance(exc, bx.ReadTimeoutError):
        return RemoteError(f"S3 endpoint {_endpoint_of(client)} does not answer (read timeout)")
    if isinstance(exc, bx.NoCredentialsError):
        return RemoteError(f"no AWS credentials found for bucket {bucket}: {CREDENTIALS_HINT}")
    if isinstance(exc, bx.ClientError):
        code, status, message = _client_error_parts(exc)
        if code in _MISSING_BUCKET_CODES or (status == 404 and code != "NoSuchKey"):
            return RemoteError(f"bucket {bucket} does not exist at {_endpoint_of(client)}")
        if code == "RequestTimeTooSkewed":
            return RemoteError("this machine's clock differs too much from the S3 server's")
        if code in _DENIED_CODES or status == 403:
            return RemoteError(f"access to bucket {bucket} denied: {CREDENTIALS_HINT}")
        if code in ("301", "PermanentRedirect"):
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            where = headers.get("x-amz-bucket-region", "another region")
            return RemoteError(f"bucket {bucket} is in {where}: set AWS_REGION to match")
        if code in ("400", "InvalidBucketName"):
            return RemoteError(one_line(f"bucket {bucket} cannot be used: {code} {message}"))
    text, _ = describe_error(exc)
    return RemoteError(one_line(f"bucket {bucket} at {_endpoint_of(client)}: {text}"))


def check_bucket(
    client: Any,
    bucket: str,
    *,
    attempts: int = 4,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Fail early, with one actionable line, if ``bucket`` cannot be used with ``client``.

    Run before any work so that a typo or an expired key is one clear error instead of a
    million identical per-file failures. A transient failure (a 503, a reset connection)
    is tried again a few times: a flaky endpoint must not stop a run before it starts.
    """
    try:
        _ask_bucket(client, bucket, lambda: client.head_bucket(Bucket=bucket), attempts, sleep)
    except _BucketRefused as refused:
        raise refused.error from None


def check_readable(
    client: Any,
    bucket: str,
    prefix: str = "",
    *,
    unsigned: bool = False,
    attempts: int = 4,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """:func:`check_bucket` for a reader (a mount, a download): one listing of at most one
    key, which a public bucket allows where HeadBucket may be refused, and which also
    fails, in one line, on a prefix that holds nothing."""
    from botocore import exceptions as bx

    def list_one() -> Any:
        return client.list_objects_v2(
            Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1
        )

    try:
        listing = _ask_bucket(client, bucket, list_one, attempts, sleep)
    except _BucketRefused as refused:
        error = refused.error
        if "denied" in str(error) or isinstance(refused.cause, bx.NoCredentialsError):
            hint = (
                "requests were unsigned; drop --no-sign-request to use your AWS credentials"
                if unsigned
                else "for a public bucket use --no-sign-request"
            )
            raise RemoteError(f"{error}; {hint}") from None
        raise error from None
    if prefix and not listing.get("KeyCount"):
        where = f"s3://{bucket}/{prefix}"
        raise RemoteError(f"nothing under {where} at {_endpoint_of(client)}; check the prefix")


class _BucketRefused(Exception):
    """:func:`_ask_bucket`'s failure: the one-line error, and the client's exception."""

    def __init__(self, error: RemoteError, cause: BaseException) -> None:
        super().__init__(str(error))
        self.error, self.cause = error, cause


def _ask_bucket(
    client: Any, bucket: str, request: Callable[[], Any], attempts: int, sleep: Callable
) -> Any:
    """``request()`` about ``bucket``, tried again on transient failures (not on an
    unreachable endpoint, which will not come back in seconds); a failure becomes
    :class:`_BucketRefused` carrying :func:`bucket_error`'s line."""
    from botocore import exceptions as bx

    def worth_another_attempt(exc: BaseException) -> bool:
        unreachable = isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError)
        return not unreachable and _is_transient(exc)

    try:
        return retry_call(
            request,
            attempts=attempts,
            base=0.5,
            cap=10.0,
            jitter=False,
            retry_on=worth_another_attempt,
            sleep=sleep,
        )
    except (bx.BotoCoreError, bx.ClientError) as exc:
        raise _BucketRefused(bucket_error(client, bucket, exc), exc) from None


def _is_transient(exc: BaseException) -> bool:
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        code, status, _ = _client_error_parts(exc)
        return retryable_error(code, status)
    return isinstance(exc, bx.BotoCoreError) and not isinstance(
        exc, bx.NoCredentialsError | bx.ParamValidationError
    )


def list_pages(
    client: Any,
    bucket: str,
    prefix: str = "",
    *,
    delimited: bool = False,
    page_size: int | None = None,
    attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict]:
    """Every ListObjectsV2 page under ``prefix`` (one "directory" of it if ``delimited``).

    A listing of millions of keys must survive a transient error on one page: the listing
    resumes from the last continuation token (with backoff) instead of starting over.
    """
    from botocore import exceptions as bx

    paginator = client.get_paginator("list_objects_v2")
    token: str | None = None
    failures = 0
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if delimited:
            kwargs["Delimiter"] = "/"
        if page_size:
            kwargs["PaginationConfig"] = {"PageSize": page_size}
        if token:  # the plain API parameter: the paginator passes it to the first request
            kwargs["ContinuationToken"] = token
        try:
            for page in paginator.paginate(**kwargs):
                yield page
                token = page.get("NextContinuationToken") or token
                failures = 0
            return
        except (bx.BotoCoreError, bx.ClientError) as exc:
            failures += 1
            if failures >= attempts or not _is_transient(exc):
                raise bucket_error(client, bucket, exc) from None
            sleep(min(30.0, 2.0 ** (failures - 1)))


def page_objects(page: dict) -> Iterator[tuple[str, int, str]]:
    """``(key, size, etag)`` of the objects of one page, ETags without their quotes."""
    for obj in page.get("Contents", ()):
        yield obj["Key"], int(obj["Size"]), strip_etag(obj.get("ETag"))


def list_objects(
    client: Any,
    bucket: str,
    prefix: str = "",
    *,
    page_size: int | None = None,
    attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[tuple[str, int, str]]:
    """Stream ``(key, size, etag)`` for every object under ``prefix``, page by page (see
    :func:`list_pages` for the resuming)."""
    for page in list_pages(
        client, bucket, prefix, page_size=page_size, attempts=attempts, sleep=sleep
    ):
        yield from page_objects(page)


def strip_etag(etag: str | None) -> str:
    """An ETag as a bare string: S3 sends it wrapped in double quotes."""
    return (etag or "").strip('"')
