"""Read a mirrored release from Python, with no FUSE mount (a JupyterHub pod, a laptop).

Everything here is fsspec: an ``s3fs`` filesystem over the bucket, a block cache chained on
top of it (fsspec's ``blockcache``: a read fetches whole blocks of ``block_size`` bytes and
keeps them in sparse local files, so re-reads are local), and a ``DirFileSystem`` rooted at
the release, so paths look like ``$DESI_ROOT``-relative paths::

    from desimirror.access import data
    data.ls("spectro/redux/fuji")
    with data.open("spectro/redux/fuji/tiles-fuji.fits") as f:      # file-like, ranged reads
        header = astropy.io.fits.getheader(f)
    path = data.local_path("spectro/redux/fuji/tiles-fuji.fits")     # a real file, for fitsio
    fitsio.read(path, ext=1)

Paths are relative to the release root, or start with a data model variable
(``$DESI_ROOT/...``, ``$DESI_SPECTRO_DATA/...``, ``$DESI_TARGET/...``...), which is mapped
onto the mirror's layout (raw data and targets are shared, outside the releases).

:func:`local_path` is for readers that need a real file (fitsio and other C libraries):
it downloads the *whole* file once into the cache (fsspec's ``filecache``) and returns its
path, keeping the file name so extensions still mean something (``.csv.gz``). The next call
checks the object's ETag (one HEAD request) and downloads again only if it changed.

Settings come from :func:`desimirror.access.config.load_config`: ``DESIMIRROR_BUCKET``,
``DESIMIRROR_ENDPOINT_URL``, ``DESIMIRROR_NO_SIGN_REQUEST`` (unsigned by default: public
data needs no credentials), ``DESIMIRROR_RELEASE``, ``DESIMIRROR_CACHE`` and
``DESIMIRROR_LOCAL`` (a local copy: then no S3 and no cache at all). Pass ``config=`` to
use other settings.

fsspec caches filesystem *instances*: two calls with equal arguments return the same
object, with the same listings cache. That is what makes repeated calls cheap, and also why
a test that changes the bucket under a live instance must call
``fsspec.AbstractFileSystem.clear_instance_cache()`` (or ``fs.invalidate_cache()``).
"""

from __future__ import annotations

import builtins
import hashlib
import os
import posixpath
import re
from pathlib import Path
from typing import IO, Any

from fsspec.implementations.cache_mapper import AbstractCacheMapper
from fsspec.implementations.cached import CachingFileSystem, WholeFileCacheFileSystem
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from desimirror.access.config import AccessConfig, load_config
from desimirror.access.env import SHARED_DIRS, data_model_env, detect_layout, normalize_release
from desimirror.errors import UsageError

DEFAULT_BLOCK_SIZE = 2**20  # a FITS header read costs one block; sequential reads merge blocks
#: Whole-file fetches (``local_path``) go in ranged parts of this size, ten at a time (s3fs's
#: ``max_concurrency``): with 1 MiB blocks a 300 MB file took 300 requests and 3.4x the time
#: of a plain boto3 download.
WHOLE_FILE_PART_SIZE = 16 * 2**20

__all__ = ["filesystem", "local_path", "ls", "open", "resolve"]

_VAR = re.compile(r"^\$(\{)?([A-Z_]+)(?(1)\})(/|$)")


def _config(config: AccessConfig | None) -> AccessConfig:
    return load_config() if config is None else config


def _release(release: str | None, config: AccessConfig) -> str:
    """The release's directory: a known one, or any the local copy or the bucket holds."""
    name = release or config.release
    try:
        return normalize_release(name, config.local)
    except UsageError:
        if config.local is not None or name.strip().lower() not in _bucket_releases(config):
            raise
        return name.strip().lower()


def _bucket_releases(config: AccessConfig) -> list[str]:
    """The release directories at the top of the bucket (one listing, cached by fsspec)."""
    fs, root = _s3(config, DEFAULT_BLOCK_SIZE)
    try:
        entries = fs.ls(root, detail=True)
    except (FileNotFoundError, PermissionError, OSError):
        return []
    names = (posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory")
    return [n for n in names if n not in SHARED_DIRS]


def resolve(path: str, *, release: str | None = None, config: AccessConfig | None = None) -> str:
    """The path relative to the mirror's top (``edr/spectro/...``, ``raw_spectro_data/...``).

    ``path`` is relative to the release, or starts with ``$DESI_ROOT`` or another data model
    variable; ``..`` may not climb out of the mirror.
    """
    cfg = _config(config)
    rel = _release(release, cfg)
    text = os.fspath(path)
    match = _VAR.match(text)
    if match:
        layout = detect_layout(cfg.local, rel) if cfg.local is not None else "mirror"
        model = data_model_env(rel, "", layout)
        name = match.group(2)
        if name not in model or not model[name].startswith("/"):
            raise UsageError(f"{path!r}: ${name} is not a data model directory variable")
        text = model[name] + "/" + text[match.end() :]
    else:
        text = f"/{rel}/{text}"
    parts: list[str] = []
    for part in text.split("/"):
        if part == "..":
            if not parts:  # normpath would silently clamp "/.." to "/"
                raise UsageError(f"{path!r} leads outside the mirror")
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


def _s3(config: AccessConfig, block_size: int):
    import s3fs

    from desimirror.storage.s3client import parse_bucket_url

    bucket, prefix = parse_bucket_url(config.bucket)
    fs = s3fs.S3FileSystem(
        anon=config.no_sign_request,
        endpoint_url=config.endpoint_url,
        client_kwargs={"region_name": config.region},
        default_block_size=block_size,
    )
    return fs, f"{bucket}/{prefix}".rstrip("/")


def _mirror(config: AccessConfig, cache: str, block_size: int):
    """The filesystem rooted at the mirror's top, with the requested cache."""
    if config.local is not None:
        root = Path(config.local).expanduser()
        if not root.is_dir():
            raise UsageError(f"DESIMIRROR_LOCAL={root} is not a directory")
        return DirFileSystem(path=str(root.resolve()), fs=LocalFileSystem())
    fs, root = _s3(config, block_size)
    if cache == "block":
        fs = CachingFileSystem(
            fs=fs,
            cache_storage=str(config.cache_dir / "fsspec-blocks"),
            check_files=True,
            expiry_time=False,
        )
    elif cache != "none":
        raise UsageError(f"unknown cache {cache!r}; use 'block' or 'none'")
    return DirFileSystem(path=root, fs=fs)


def filesystem(
    release: str | None = None,
    *,
    config: AccessConfig | None = None,
    cache: str = "block",
    block_size: int = DEFAULT_BLOCK_SIZE,
):
    """An fsspec filesystem whose root is the release (``$DESI_ROOT``).

    ``cache="block"`` (default) keeps fetched blocks on local disk under
    ``$DESIMIRROR_CACHE/fsspec-blocks`` (unbounded: delete the directory to reclaim it);
    ``cache="none"`` reads straight from S3 with s3fs's in-memory read-ahead. With
    ``DESIMIRROR_LOCAL`` set, this is the local copy and ``cache`` is ignored.
    """
    cfg = _config(config)
    rel = _release(release, cfg)
    return DirFileSystem(path=rel, fs=_mirror(cfg, cache, block_size))


def open(  # shadows the builtin on purpose: callers write data.open(...)
    path: str,
    mode: str = "rb",
    *,
    release: str | None = None,
    config: AccessConfig | None = None,
    **kwargs: Any,
) -> IO:
    """Open a file of the release for reading; only the blocks read are fetched.

    A gzipped file (``.gz``) is read whole by every reader (gzip has no random access), so
    it is fetched whole, as :func:`local_path` does, and opened from that copy: astropy
    then reads it on the first open as fitsio reads the local path (reading it through the
    block cache would hand astropy a sparse cache file that is not filled yet). A missing
    file is the same one-line error as from :func:`local_path`.
    """
    if any(c in mode for c in "wax+"):
        raise UsageError("the mirror is read-only; open files with mode 'rb' or 'r'")
    cfg = _config(config)
    key = resolve(path, release=release, config=cfg)
    if key.endswith(".gz") and cfg.local is None:
        return builtins.open(local_path(path, release=release, config=cfg), mode, **kwargs)
    try:
        return _mirror(cfg, "block", DEFAULT_BLOCK_SIZE).open(key, mode, **kwargs)
    except FileNotFoundError:
        raise UsageError(f"{path!r}: no such file in {cfg.local or cfg.bucket}") from None


def ls(
    path: str = "",
    *,
    detail: bool = False,
    release: str | None = None,
    config: AccessConfig | None = None,
) -> list:
    """List a directory of the release: names relative to the release root (or details)."""
    cfg = _config(config)
    rel = _release(release, cfg)
    fs = _mirror(cfg, "none", DEFAULT_BLOCK_SIZE)
    target = resolve(path, release=rel, config=cfg)
    try:
        entries = fs.ls(target, detail=True)
    except FileNotFoundError:
        raise UsageError(f"{path!r}: no such directory in {rel}") from None
    if detail:
        return entries
    return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries)


class NamedHashMapper(AbstractCacheMapper):
    """Names cached files ``<sha256 of the path>-<basename>``: unique, and still named.

    fsspec's default names cached files by a bare hash; readers that decide by extension
    (``.gz``, ``.fz``, ``.csv``) then fail on the local copy.
    """

    def __call__(self, path: str) -> str:
        digest = hashlib.sha256(path.encode()).hexdigest()[:32]
        return f"{digest}-{posixpath.basename(path)}"


def local_path(path: str, *, release: str | None = None, config: AccessConfig | None = None) -> str:
    """A real local path holding the whole file, fetched on first use and re-used after.

    For a local copy (``DESIMIRROR_LOCAL``) this is simply the file's own path.
    """
    cfg = _config(config)
    key = resolve(path, release=release, config=cfg)
    if cfg.local is not None:
        local = Path(cfg.local).expanduser().resolve() / key
        if not local.is_file():
            raise UsageError(f"{path!r}: no such file in {cfg.local}")
        return str(local)
    remote = _mirror(cfg, "none", WHOLE_FILE_PART_SIZE)
    fs = WholeFileCacheFileSystem(
        fs=remote,
        cache_storage=str(cfg.cache_dir / "fsspec-files"),
        check_files=True,
        expiry_time=False,
        cache_mapper=NamedHashMapper(),
    )
    try:
        with fs.open(key, "rb") as f:
            return f.name
    except FileNotFoundError:
        raise UsageError(f"{path!r}: no such file in {cfg.bucket}") from None
