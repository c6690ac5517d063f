"""s3client: one-line errors a user can act on, listings that page and resume, sane clients."""

from __future__ import annotations

import re
from typing import Any

import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from desimirror.errors import RemoteError
from desimirror.storage.s3client import (
    check_bucket,
    check_readable,
    describe_error,
    endpoint_url,
    is_throttle,
    list_objects,
    make_client,
)
from desimirror.storage.transfer import S3Target


@pytest.fixture
def aws_env(s3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3.env


def client_error(code: str, status: int, message: str = "") -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")


# --- against the real server -----------------------------------------------------------------


@pytest.mark.s3
@pytest.mark.usefixtures("aws_env")
def test_check_bucket_accepts_an_existing_bucket(s3, bucket):
    check_bucket(make_client(S3Target(bucket, endpoint_url=s3.endpoint_url)), bucket)


@pytest.mark.s3
@pytest.mark.usefixtures("aws_env")
def test_check_bucket_missing_bucket(s3):
    client = make_client(S3Target("desimirror-absent", endpoint_url=s3.endpoint_url))
    where = re.escape(s3.endpoint_url)
    with pytest.raises(RemoteError, match=rf"^bucket desimirror-absent does not exist at {where}$"):
        check_bucket(client, "desimirror-absent")


@pytest.mark.s3
@pytest.mark.usefixtures("aws_env")
def test_check_readable_wants_something_under_the_prefix(s3, bucket):
    client = make_client(S3Target(bucket, endpoint_url=s3.endpoint_url))
    client.put_object(Bucket=bucket, Key="edr/a.fits", Body=b"x")
    check_readable(client, bucket, "edr")
    check_readable(client, bucket)
    with pytest.raises(
        RemoteError, match=rf"^nothing under s3://{bucket}/dr9 at .*check the prefix$"
    ):
        check_readable(client, bucket, "dr9")
    with pytest.raises(RemoteError, match=r"^bucket desimirror-absent does not exist at "):
        check_readable(client, "desimirror-absent", "edr")


@pytest.mark.s3
@pytest.mark.usefixtures("aws_env")
def test_check_readable_says_which_way_to_sign(s3, bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "Wr0ngSecretValue+" + "x" * 23)
    client = make_client(S3Target(bucket, endpoint_url=s3.endpoint_url), max_attempts=1)
    with pytest.raises(RemoteError, match=r"denied.*for a public bucket use --no-sign-request$"):
        check_readable(client, bucket, sleep=lambda _: None)


def test_check_bucket_unreachable_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    target = S3Target("b", endpoint_url="http://127.0.0.1:1")
    client = make_client(target, max_attempts=1, connect_timeout=2)
    with pytest.raises(RemoteError) as info:
        check_bucket(client, "b")
    assert str(info.value) == "cannot reach S3 endpoint http://127.0.0.1:1"


@pytest.mark.s3
def test_each_client_reads_the_credentials_the_environment_has_now(
    aws_env, s3, bucket, monkeypatch
):
    """Clients share the loaded service model, not a session: credentials changed between
    two clients of one process (a refreshed key, another profile) are the ones used."""
    target = S3Target(bucket, endpoint_url=s3.endpoint_url)
    check_bucket(make_client(target, max_attempts=1), bucket)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "Wr0ngSecretValue+" + "y" * 23)
    with pytest.raises(RemoteError, match="denied"):
        check_bucket(make_client(target, max_attempts=1), bucket)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_env["AWS_SECRET_ACCESS_KEY"])
    check_bucket(make_client(target, max_attempts=1), bucket)


@pytest.mark.s3
def test_check_bucket_wrong_secret_is_denied_without_echoing_it(aws_env, s3, bucket, monkeypatch):
    wrong = "Wr0ngSecretValue+" + "x" * 23
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    client = make_client(S3Target(bucket, endpoint_url=s3.endpoint_url), max_attempts=1)
    with pytest.raises(RemoteError) as info:
        check_bucket(client, bucket)
    message = str(info.value)
    assert "denied" in message
    assert "credentials" in message
    assert wrong not in message
    assert aws_env["AWS_SECRET_ACCESS_KEY"] not in message
    assert "\n" not in message


@pytest.mark.s3
@pytest.mark.usefixtures("aws_env")
def test_list_objects_pages_through_everything(s3, bucket):
    client = make_client(S3Target(bucket, endpoint_url=s3.endpoint_url))
    expected = {}
    for i in range(30):
        key = f"pre/{i:03d}.fits"
        body = b"z" * i
        etag = client.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')
        expected[key] = (i, etag)
    client.put_object(Bucket=bucket, Key="other/outside.fits", Body=b"no")
    requests = []
    client.meta.events.register(
        "before-call.s3.ListObjectsV2", lambda **kw: requests.append(kw["params"])
    )

    listed = list(list_objects(client, bucket, "pre/", page_size=7))

    assert {key: (size, etag) for key, size, etag in listed} == expected
    assert len(listed) == 30
    assert len(requests) == 5  # 7 + 7 + 7 + 7 + 2


@pytest.mark.s3
@pytest.mark.usefixtures("aws_env")
def test_list_objects_of_a_missing_bucket_is_a_remote_error(s3):
    client = make_client(S3Target("desimirror-absent", endpoint_url=s3.endpoint_url))
    with pytest.raises(RemoteError, match="desimirror-absent"):
        list(list_objects(client, "desimirror-absent", ""))


# --- without a server ------------------------------------------------------------------------


class FlakyPaginator:
    """Serves pages of a fake listing, failing once before the second page."""

    def __init__(self, pages: list[list[str]], error: Exception) -> None:
        self.pages = pages
        self.error: Exception | None = error
        self.calls: list[dict] = []

    def paginate(self, **kwargs):
        self.calls.append(kwargs)
        start = int(kwargs.get("ContinuationToken", "0"))
        for index in range(start, len(self.pages)):
            if index == 1 and self.error is not None:
                error, self.error = self.error, None
                raise error
            page: dict[str, Any] = {
                "Contents": [{"Key": k, "Size": 1, "ETag": '"e"'} for k in self.pages[index]]
            }
            if index + 1 < len(self.pages):
                page["NextContinuationToken"] = str(index + 1)
            yield page


class FakeClient:
    def __init__(self, paginator: FlakyPaginator) -> None:
        self.paginator = paginator
        self.meta = type("Meta", (), {"endpoint_url": "http://fake"})()

    def get_paginator(self, name: str) -> FlakyPaginator:
        assert name == "list_objects_v2"
        return self.paginator


def test_list_objects_resumes_after_a_transient_error():
    paginator = FlakyPaginator([["a", "b"], ["c"], ["d"]], client_error("SlowDown", 503))
    sleeps: list[float] = []
    listed = list(list_objects(FakeClient(paginator), "bkt", "", sleep=sleeps.append))
    assert [key for key, _, _ in listed] == ["a", "b", "c", "d"]
    assert [etag for _, _, etag in listed] == ["e"] * 4
    assert paginator.calls[1]["ContinuationToken"] == "1"  # resumed, not restarted
    assert sleeps == [1.0]


def test_list_objects_does_not_retry_a_refusal():
    paginator = FlakyPaginator([["a"], ["b"]], client_error("AccessDenied", 403))
    with pytest.raises(RemoteError, match="access to bucket bkt denied"):
        list(list_objects(FakeClient(paginator), "bkt", "", sleep=[].append))


@pytest.mark.parametrize(
    ("exc", "fragment", "retryable"),
    [
        (client_error("SlowDown", 503, "Please reduce your request rate."), "SlowDown (503)", True),
        (client_error("InternalError", 500), "InternalError (500)", True),
        (client_error("RequestTimeout", 400), "RequestTimeout (400)", True),
        (client_error("AccessDenied", 403, "Access Denied"), "AccessDenied (403)", False),
        (client_error("NoSuchBucket", 404), "NoSuchBucket (404)", False),
        (client_error("InvalidAccessKeyId", 403), "InvalidAccessKeyId", False),
        (EndpointConnectionError(endpoint_url="http://h:1/b/k"), "cannot reach", True),
        (ReadTimeoutError(endpoint_url="http://h:1/b/k"), "ReadTimeoutError", True),
        (FileNotFoundError(2, "No such file"), "local file not found", False),
        (PermissionError(13, "Permission denied"), "permission denied", False),
        (OSError(5, "Input/output error"), "Input/output error", True),
    ],
)
def test_describe_error(exc, fragment, retryable):
    text, again = describe_error(exc)
    assert fragment in text
    assert "\n" not in text
    assert again is retryable


def test_describe_error_removes_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-1234")
    text, _ = describe_error(client_error("Weird", 500, "echo s3cr3t-value-1234\nsecond line"))
    assert "s3cr3t-value-1234" not in text
    assert "\n" not in text


def test_make_client_defaults(monkeypatch, tmp_path):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    client = make_client(S3Target("b"))
    assert client.meta.region_name == "us-west-2"  # where DESI's public bucket lives
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.config.signature_version is not UNSIGNED
    public = make_client(S3Target("b", region="eu-central-1", no_sign_request=True))
    assert public.meta.region_name == "eu-central-1"
    assert public.meta.config.signature_version is UNSIGNED


def test_endpoint_url_prefers_the_target_then_the_environment(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:1")
    assert endpoint_url(S3Target("b", endpoint_url="http://explicit:2")) == "http://explicit:2"
    assert endpoint_url(S3Target("b")) == "http://env:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:3")
    assert endpoint_url(S3Target("b")) == "http://s3-only:3"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    assert endpoint_url(S3Target("b")) is None


class FlakyHeadClient(FakeClient):
    """head_bucket fails with the given errors first, then answers."""

    def __init__(self, errors: list[Exception]) -> None:
        super().__init__(FlakyPaginator([], client_error("x", 500)))
        self.errors = list(errors)
        self.calls = 0

    def head_bucket(self, **_: str) -> dict:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return {}


def test_check_bucket_rides_out_transient_failures_but_not_refusals():
    sleeps: list[float] = []
    flaky = FlakyHeadClient([client_error("SlowDown", 503), client_error("InternalError", 500)])
    check_bucket(flaky, "bkt", sleep=sleeps.append)
    assert flaky.calls == 3
    assert sleeps == [0.5, 1.0]
    denied = FlakyHeadClient([client_error("AccessDenied", 403)])
    with pytest.raises(RemoteError, match="denied"):
        check_bucket(denied, "bkt", sleep=sleeps.append)
    assert denied.calls == 1
    down = FlakyHeadClient([client_error("InternalError", 500)] * 10)
    with pytest.raises(RemoteError):
        check_bucket(down, "bkt", sleep=sleeps.append)
    assert down.calls == 4  # bounded


@pytest.mark.parametrize(
    ("code", "status", "throttle"),
    [
        ("SlowDown", 503, True),
        (None, 503, True),
        ("TooManyRequests", 429, True),
        ("InternalError", 500, False),
        ("AccessDenied", 403, False),
    ],
)
def test_is_throttle(code, status, throttle):
    assert is_throttle(code, status) is throttle
