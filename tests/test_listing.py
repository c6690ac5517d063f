"""Listing a prefix with requests in parallel: every object exactly once, on a real server.

``verify`` trusts this listing to say what the bucket holds: an object listed twice would
hide nothing, but one left out would be reported missing (and sent again), so the tests
compare with the plain sequential listing key for key.
"""

from __future__ import annotations

import itertools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from desimirror.errors import RemoteError
from desimirror.storage.listing import list_tree
from desimirror.storage.s3client import list_objects, make_client
from desimirror.storage.transfer import S3Target

pytestmark = [pytest.mark.s3, pytest.mark.usefixtures("cli_env")]  # credentials


def _client(s3, bucket: str):
    return make_client(S3Target(bucket, endpoint_url=s3.endpoint_url), max_pool_connections=12)


def _fill(client, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=k.encode()), keys))


KEYS = [
    "edr/top.fits",
    "edr/a b/x.fits",
    "edr/a-c",
    "edr/a/b/c/d/e/deep.fits",
    *(f"edr/spectro/redux/t{t:02d}/f{i}.fits" for t in range(12) for i in range(5)),
    *(f"edr/target/cat{i:03d}.fits" for i in range(30)),
    "other/outside.fits",
]


@pytest.mark.parametrize("workers", [1, 2, 8])
def test_every_object_once_like_the_plain_listing(s3, bucket: str, workers: int) -> None:
    client = _client(s3, bucket)
    _fill(client, bucket, KEYS)
    delimited: list[dict] = []
    client.meta.events.register(
        "before-parameter-build.s3.ListObjectsV2",
        lambda params, **_: delimited.append(params) if params.get("Delimiter") else None,
    )
    listed = list(list_tree(client, bucket, "edr/", workers=workers))
    counts = Counter(key for key, _, _ in listed)
    assert max(counts.values()) == 1
    assert sorted(counts) == sorted(k for k in KEYS if k.startswith("edr/"))
    assert sorted(listed) == sorted(list_objects(client, bucket, "edr/"))
    assert bool(delimited) == (workers > 1)  # the fan-out walked the top of the tree


def test_a_consumer_that_stops_early_stops_the_workers(s3, bucket: str) -> None:
    client = _client(s3, bucket)
    _fill(client, bucket, [f"many/d{d}/f{i}" for d in range(10) for i in range(40)])
    rows = list_tree(client, bucket, "many/", workers=4)
    first = list(itertools.islice(rows, 5))
    rows.close()  # returns once the workers have stopped
    assert len(first) == 5


def test_a_missing_bucket_is_one_remote_error(s3) -> None:
    client = _client(s3, "desimirror-absent")
    with pytest.raises(RemoteError):
        list(list_tree(client, "desimirror-absent", "edr/", workers=4))
