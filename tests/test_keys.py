"""Object keys: prefix, remap rules (longest first, whole components), collisions."""

from __future__ import annotations

import pytest

from desimirror.errors import UsageError
from desimirror.storage.keys import KeyMap, first_collision
from desimirror.units import format_size, parse_size

SEED_RULES = ("edr/spectro/data=raw_spectro_data", "edr/target=target")


def test_default_prefix_and_seed_remaps() -> None:
    keys = KeyMap.build("edr", SEED_RULES)
    assert keys.key("spectro/redux/fuji/x.fits") == "edr/spectro/redux/fuji/x.fits"
    assert keys.key("spectro/data/20201214/a.fits") == "raw_spectro_data/20201214/a.fits"
    assert keys.key("target/catalogs/t.fits") == "target/catalogs/t.fits"
    assert keys.key("spectro/database/x") == "edr/spectro/database/x"  # components, not chars
    assert keys.key("") == "edr"


def test_longest_rule_wins() -> None:
    keys = KeyMap.build("edr", ("edr/spectro=s", "edr/spectro/data=d"))
    assert keys.key("spectro/data/n/f") == "d/n/f"
    assert keys.key("spectro/redux/f") == "s/redux/f"


def test_absolute_source_under_root_as_in_the_original_makefile() -> None:
    keys = KeyMap.build(
        "edr", ("/global/public/edr/spectro/data=raw_spectro_data",), root="/global/public/edr"
    )
    assert keys.key("spectro/data/n/f") == "raw_spectro_data/n/f"


@pytest.mark.parametrize(
    "rule",
    ["nodest", "edr/../x=y", "edr/a=../b", "=x", "edr/a=", "/etc=x", "edr//a=b"],
)
def test_bad_rules_are_refused(rule: str) -> None:
    with pytest.raises(UsageError):
        KeyMap.build("edr", (rule,), root="/global/public/edr")


@pytest.mark.parametrize("prefix", ["", "/", "a/../b", "..", "a//b"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(UsageError):
        KeyMap.build(prefix)


def test_list_prefixes_cover_remapped_subtrees() -> None:
    keys = KeyMap.build("edr", SEED_RULES)
    assert keys.list_prefixes() == ["edr/", "raw_spectro_data/", "target/"]
    assert keys.list_prefixes("spectro") == ["edr/spectro/", "raw_spectro_data/"]
    assert keys.list_prefixes("spectro/data/2020") == ["raw_spectro_data/2020/"]


def test_collision_detected_and_absent() -> None:
    keys = KeyMap.build("edr", ("edr/a=edr/b",))
    assert first_collision(keys, ["a/x", "b/y", "b/x"])[:3] == ("a/x", "b/x", "edr/b/x")
    assert first_collision(keys, ["a/x", "b/y"]) is None
    assert first_collision(KeyMap.build("edr"), ["a", "b"]) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10GB", 10 * 10**9), ("1TiB", 2**40), ("5000", 5000), ("1.5 MB", 1_500_000), ("2k", 2000)],
)
def test_sizes_parse(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "10XB", "-5", "1e3GB"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="invalid size"):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(999) == "999 B"
    assert format_size(1_234_567) == "1.23 MB"
