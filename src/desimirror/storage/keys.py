"""From a path in the release to an object key: ``PREFIX/relative/path``, then remap rules.

Remap rules rewrite key prefixes, longest match first, on whole path components: with
``edr/spectro/data=raw_spectro_data`` the file ``spectro/data/20201214/x.fits`` of the
``edr`` crawl becomes ``raw_spectro_data/20201214/x.fits``, shared between releases as on
the public bucket. Every rule is checked so that no key can climb out of the bucket prefix
(no ``..``, no empty components) and two files never share a key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from desimirror.errors import UsageError


def _clean_key_prefix(text: str, what: str) -> str:
    """Normalise a key prefix (no leading/trailing '/'), refusing anything that escapes."""
    stripped = text.strip().strip("/")
    parts = stripped.split("/")
    if not stripped or any(p in ("", ".", "..") for p in parts):
        raise UsageError(f"invalid {what} {text!r}: use a plain key prefix like 'edr/target'")
    return stripped


@dataclass(frozen=True)
class KeyMap:
    """How manifest paths become object keys for one mirror."""

    prefix: str
    rules: tuple[tuple[str, str], ...] = ()  # (source key prefix, destination), longest first

    @classmethod
    def build(cls, prefix: str, remap: Iterable[str] = (), *, root: str | None = None) -> KeyMap:
        """Parse ``SRC=DST`` rules. ``SRC`` is a key prefix (``edr/target``); for the
        original makefile's habit, an absolute path under the crawled ``root`` is accepted
        and turned into the key prefix it stands for."""
        clean_prefix = _clean_key_prefix(prefix, "prefix")
        rules: dict[str, str] = {}
        for rule in remap:
            src, sep, dst = rule.partition("=")
            if not sep:
                raise UsageError(
                    f"invalid remap {rule!r}: expected SRC=DST, e.g. edr/target=target"
                )
            src = src.strip()
            if src.startswith("/"):
                src = cls._absolute_to_key(src, clean_prefix, root)
            src = _clean_key_prefix(src, "remap source")
            dst = _clean_key_prefix(dst, "remap destination")
            if src in rules and rules[src] != dst:
                raise UsageError(f"remap {src!r} is given twice with different destinations")
            rules[src] = dst
        ordered = tuple(sorted(rules.items(), key=lambda r: (-len(r[0]), r[0])))
        return cls(clean_prefix, ordered)

    @staticmethod
    def _absolute_to_key(src: str, prefix: str, root: str | None) -> str:
        root_clean = (root or "").rstrip("/")
        if not root_clean or not (src == root_clean or src.startswith(root_clean + "/")):
            raise UsageError(
                f"invalid remap source {src!r}: an absolute path must lie under the crawled "
                f"root {root or '(unknown)'}"
            )
        rest = src[len(root_clean) :].strip("/")
        return f"{prefix}/{rest}" if rest else prefix

    def key(self, path: str) -> str:
        """The object key for the manifest path ``path`` ('' is the root)."""
        raw = f"{self.prefix}/{path}" if path else self.prefix
        for src, dst in self.rules:
            if raw == src:
                return dst
            if raw.startswith(src + "/"):
                return dst + raw[len(src) :]
        return raw

    def list_prefixes(self, subdir: str = "") -> list[str]:
        """Key prefixes (each ending in '/') under which the objects of ``subdir`` live.

        The subtree's own key, plus the destination of every rule whose source lies inside
        the subtree; nested prefixes are dropped so nothing is listed twice.
        """
        base = f"{self.prefix}/{subdir}" if subdir else self.prefix
        found = {self.key(subdir)}
        for src, dst in self.rules:
            if src.startswith(base + "/"):
                found.add(dst)
        ordered = sorted(p + "/" for p in found)
        return [p for i, p in enumerate(ordered) if not any(p.startswith(q) for q in ordered[:i])]

    def describe(self) -> dict[str, object]:
        """A JSON-able description, stored in the manifest to pin one mirror to one layout."""
        return {"prefix": self.prefix, "remap": [f"{s}={d}" for s, d in self.rules]}


class Collision(NamedTuple):
    """Two paths whose keys the store cannot tell apart: ``key`` is what they share."""

    path: str
    other: str
    key: str
    rewritten: bool = False  # equal only once the store rewrites '\\' as '/'

    def message(self) -> str:
        """The one-line refusal, naming both paths."""
        if self.rewritten:
            return (
                f"{self.path!r} and {self.other!r} would be one object {self.key!r}: S3 "
                "stores such as SeaweedFS store '\\' in a key as '/'; rename one of the "
                "two files (or leave one out of the plan)"
            )
        return (
            f"remap makes {self.path!r} and {self.other!r} share the key {self.key!r}; fix --remap"
        )


def store_spelling(key: str) -> str:
    """The key as a store that rewrites it may keep it: ``\\`` becomes ``/``."""
    return key.replace("\\", "/")


def first_collision(
    keymap: KeyMap, paths: Iterable[str] | Callable[[], Iterable[str]]
) -> Collision | None:
    """The first pair of paths whose objects would be one, or None.

    Two kinds: a remap that sends two paths to one key, and two keys that are equal once a
    store rewrites them (SeaweedFS keeps ``a\\b`` as ``a/b`` and answers for both, so both
    would be "sent", one object would exist, and verify could never agree). ``paths`` may
    be a function returning them anew: the paths are read twice when some key holds a
    backslash. Without remapping every key is distinct, so only keys under some rule's
    destination and keys with a backslash are remembered, which keeps memory small.
    """
    again = paths if callable(paths) else _reiterable(paths)
    destinations = tuple(d for _, d in keymap.rules)
    seen: dict[str, tuple[str, str]] = {}  # store spelling -> (path, its key)
    rewritten: dict[str, tuple[str, str]] = {}
    for path in again():
        key = keymap.key(path)
        spelled = store_spelling(key)
        under_rule = any(spelled == d or spelled.startswith(d + "/") for d in destinations)
        if under_rule:
            if spelled in seen:
                first, first_key = seen[spelled]
                return Collision(first, path, spelled, rewritten=first_key != key)
            seen[spelled] = (path, key)
        if spelled != key:
            if spelled in rewritten:
                return Collision(rewritten[spelled][0], path, spelled, rewritten=True)
            rewritten[spelled] = (path, key)
    if not rewritten:
        return None
    for path in again():  # a key without a backslash that one with a backslash becomes
        key = keymap.key(path)
        if key in rewritten and rewritten[key][1] != key:
            return Collision(rewritten[key][0], path, key, rewritten=True)
    return None


def _reiterable(paths: Iterable[str]) -> Callable[[], Iterable[str]]:
    items = list(paths) if iter(paths) is paths else paths
    return lambda: items
