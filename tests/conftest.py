"""Shared fixtures: one real SeaweedFS S3 server per test session, a bucket per test.

The server is the same embedded default ``make demo`` uses, started on 127.0.0.1 and
stopped by PID. Set ``DESIMIRROR_TEST_ENDPOINT_URL`` (with AWS credentials in the
environment) to run the same tests against another S3 endpoint instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from desimirror.dev.s3server import SeaweedServer
from faultproxy import FaultProxy
from helpers import S3Endpoint


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """A real S3 endpoint for the whole session (SeaweedFS unless retargeted)."""
    external = os.environ.get("DESIMIRROR_TEST_ENDPOINT_URL")
    if external:
        keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
        env = {k: os.environ[k] for k in keys if k in os.environ}
        env["AWS_ENDPOINT_URL"] = external
        yield S3Endpoint(external, env)
        return
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield S3Endpoint(server.endpoint_url, server.env())
    finally:
        server.stop()


@pytest.fixture
def bucket(s3: S3Endpoint, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket named after the test (3 to 63 lowercase characters)."""
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")
    name = f"t-{name}"[:50].rstrip("-") + f"-{os.getpid() % 10000}"
    client = s3.client()
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    suffix = 0
    candidate = name
    while candidate in existing:
        suffix += 1
        candidate = f"{name}-{suffix}"
    client.create_bucket(Bucket=candidate)
    return candidate


@pytest.fixture
def cli_env(s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for running the desimirror command against the test endpoint."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **s3.env}


@pytest.fixture
def fault_proxy(s3: S3Endpoint) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the test endpoint; no faults until a test sets them."""
    with FaultProxy(s3.endpoint_url) as running:
        yield running


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the S3 server (directly or through a fixture) is marked ``s3``,
    so ``-m 'not s3'`` runs exactly the tests that need no server."""
    for item in items:
        if "s3" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.s3)
