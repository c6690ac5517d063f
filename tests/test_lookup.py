"""Looking keys up in a real bucket: exact answers, and few requests where keys cluster.

The uploader trusts these answers twice: an object found with the right size and checksum
is adopted instead of sent, and an ETag read back after s5cmd is what proves its upload.
A key reported absent that is present costs a resend; one reported present that is
absent would lose a file. So the answers are checked key by key, on SeaweedFS, whose
listing order is not S3's byte order (it lists ``a/...`` before ``a b``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from desimirror.storage.lookup import ObjectLookup

pytestmark = pytest.mark.s3

# Names that sort differently by bytes and by directory: ' ', '-', '.' sort before '/'.
ODD = ["p/a/b", "p/a/z/y", "p/a b", "p/a-c", "p/a.d", "p/a0", "p/ab", "p/é/x", "p/z"]


def _put(client, bucket: str, keys: list[str]) -> dict[str, int]:
    sizes = {key: len(key) for key in keys}
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b"x" * sizes[k]), keys)
        )
    return sizes


def test_a_fresh_prefix_costs_one_list_for_many_keys(s3, bucket: str) -> None:
    lookup = ObjectLookup(s3.client(), bucket)
    wanted = [f"edr/spectro/redux/d{d:02d}/f{f:03d}.fits" for d in range(20) for f in range(50)]
    found = lookup.find(wanted)
    assert found.objects == {}
    assert found.unknown == set()
    assert lookup.requests == 1


def test_answers_are_exact_in_a_crowded_bucket_with_odd_order(s3, bucket: str) -> None:
    client = s3.client()
    present = [*ODD, *(f"p/a/many/f{i:03d}" for i in range(40)), *(f"p/q/{i}" for i in range(20))]
    # more unwanted objects than the page budget of the wanted keys lists (37 pages of 5)
    crowd = [f"p/crowd/c{i:03d}" for i in range(200)] + [f"p/a/crowd/c{i:03d}" for i in range(100)]
    sizes = _put(client, bucket, present + crowd)
    absent = [f"p/a/many/g{i:03d}" for i in range(10)] + ["p/a c", "p/a/b0", "p/é", "p/zz"]
    wanted = present + absent
    lookup = ObjectLookup(client, bucket)
    lookup.page_keys = 5  # tiny pages: every subtree is "crowded", so it splits level by level
    found = lookup.find(wanted)
    assert lookup.requests > 37  # the budget ran out and the subtrees were listed apart
    assert found.unknown == set()
    assert set(found.objects) == set(present)
    for key, info in found.objects.items():
        assert info.size == sizes[key]
        assert info.etag == client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    plain = ObjectLookup(client, bucket).find(wanted)  # default pages: the one-listing path
    assert set(plain.objects) == set(present)


def test_after_an_upload_a_thousand_etags_cost_one_list(s3, bucket: str) -> None:
    client = s3.client()
    keys = [f"edr/tiles/{t:03d}/coadd-{t:03d}-{i}.fits" for t in range(100) for i in range(10)]
    _put(client, bucket, keys)
    lookup = ObjectLookup(client, bucket)
    found = lookup.find(keys)
    assert set(found.objects) == set(keys)
    assert lookup.requests == 1


def test_checksums_are_asked_of_every_key(s3, bucket: str) -> None:
    client = s3.client()
    client.put_object(Bucket=bucket, Key="k/one", Body=b"data", ChecksumAlgorithm="SHA256")
    lookup = ObjectLookup(client, bucket)
    found = lookup.find(["k/one", "k/two"], checksums=True)
    assert set(found.objects) == {"k/one"}
    assert found.objects["k/one"].checksum_known
    assert found.objects["k/one"].checksum_sha256
    assert lookup.requests == 2
