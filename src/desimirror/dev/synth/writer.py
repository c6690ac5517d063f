"""Writing a planned tree to disk, and counting it: files, holes, checksum files, mtimes.

The layout says what the tree holds (:mod:`.layout`), the FITS module what a FITS file holds
(:mod:`.fits`); this module puts both on disk beneath ``root`` and tallies what it wrote,
so that :func:`desimirror.dev.synth.estimate` and the writer count the same way.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import random
from collections.abc import Iterator
from pathlib import Path

from desimirror.dev.synth import fits, tables
from desimirror.dev.synth.layout import CHUNK, DirSpec, FileSpec, LinkSpec, SynthSummary


def _checksum_line(digest: str, name: str) -> str:
    return f"{digest}  {name}\n"


def _checksum_size(spec: DirSpec) -> int:
    return sum(len(_checksum_line("0" * 64, f.name).encode()) for f in spec.files)


def _parents(path: str) -> Iterator[str]:
    """``a/b/c`` → ``a/b/c``, ``a/b``, ``a``: the directories a path needs."""
    while path:
        yield path
        path = posixpath.dirname(path)


class Tally:
    """Counts entries as they are planned or written, and the directories they imply."""

    def __init__(self) -> None:
        self.files = self.bytes = self.symlinks = self.empty_dirs = self.checksum_files = 0
        self.dir_mtimes: dict[str, int | None] = {}

    def add_dirs(self, path: str, mtime: int | None) -> list[str]:
        """Record a directory and its parents; returns those new, outermost first."""
        new = []
        for parent in _parents(path):
            if parent in self.dir_mtimes:
                break
            new.append(parent)
            self.dir_mtimes[parent] = None
        if mtime is not None:
            self.dir_mtimes[path] = mtime
        return new[::-1]

    def add(self, entry: DirSpec | LinkSpec) -> tuple[int, int]:
        """Count one planned entry; returns the (files, bytes) it adds."""
        if isinstance(entry, LinkSpec):
            self.add_dirs(posixpath.dirname(entry.path), None)
            self.symlinks += 1
            return 0, 0
        self.add_dirs(entry.path, entry.mtime)
        files, nbytes = len(entry.files), sum(f.size for f in entry.files)
        if not entry.files:
            self.empty_dirs += 1
        if entry.checksum:
            self.checksum_files += 1
            files, nbytes = files + 1, nbytes + _checksum_size(entry)
        self.files += files
        self.bytes += nbytes
        return files, nbytes

    def summary(
        self, root: Path, scale: float, seed: int, sparse: bool, seconds: float = 0.0
    ) -> SynthSummary:
        return SynthSummary(
            root=str(root),
            scale=scale,
            seed=seed,
            sparse=sparse,
            files=self.files,
            dirs=len(self.dir_mtimes),
            bytes=self.bytes,
            symlinks=self.symlinks,
            empty_dirs=self.empty_dirs,
            checksum_files=self.checksum_files,
            seconds=round(seconds, 3),
        )


class _ZeroDigests:
    """SHA-256 of n zero bytes for any n, resuming saved hash states every 64 KiB.

    Sparse trees hold terabytes of zeros; hashing each file from scratch would take longer
    than writing the tree, so each digest costs at most one 64 KiB tail.
    """

    STEP = 1 << 16

    def __init__(self) -> None:
        self._zeros = bytes(self.STEP)
        self._states = [hashlib.sha256()]

    def hexdigest(self, size: int) -> str:
        whole, tail = divmod(size, self.STEP)
        while len(self._states) <= whole:
            state = self._states[-1].copy()
            state.update(self._zeros)
            self._states.append(state)
        digest = self._states[whole].copy()
        digest.update(memoryview(self._zeros)[:tail])
        return digest.hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class TreeWriter:
    """Writes planned entries under ``root``: random bytes, or holes when sparse."""

    FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)

    def __init__(self, root: Path, seed: int, sparse: bool) -> None:
        self.root, self.seed, self.sparse = root, seed, sparse
        self.tally = Tally()
        self.zeros = _ZeroDigests() if sparse else None

    def write(self, entry: DirSpec | LinkSpec) -> tuple[int, int]:
        if isinstance(entry, LinkSpec):
            self._mkdirs(posixpath.dirname(entry.path), None)
            path = self.root / entry.path
            os.symlink(entry.target, path)
            os.utime(path, ns=(entry.mtime * 10**9,) * 2, follow_symlinks=False)
            return self.tally.add(entry)
        self._mkdirs(entry.path, entry.mtime)
        dir_fd = os.open(self.root / entry.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            rng = random.Random(f"{self.seed}:bytes:{entry.path}")
            lines = [_checksum_line(self._write_file(dir_fd, f, rng), f.name) for f in entry.files]
            if entry.checksum:
                text = "".join(sorted(lines, key=lambda line: line[66:])).encode()
                self._write_bytes(dir_fd, entry.checksum, text, entry.mtime)
        finally:
            os.close(dir_fd)
        return self.tally.add(entry)

    def _mkdirs(self, path: str, mtime: int | None) -> None:
        for new in self.tally.add_dirs(path, mtime):
            os.mkdir(self.root / new)

    def _write_file(self, dir_fd: int, spec: FileSpec, rng: random.Random) -> str:
        fd = os.open(spec.name, self.FLAGS, 0o644, dir_fd=dir_fd)
        try:
            if spec.product is not None:
                digest = self._write_product(fd, spec)
            elif self.zeros is not None:
                os.ftruncate(fd, spec.size)
                digest = self.zeros.hexdigest(spec.size)
            else:
                digest = self._fill(fd, spec.size, rng)
            os.utime(fd, ns=(spec.mtime * 10**9,) * 2)
        finally:
            os.close(fd)
        return digest

    def _write_product(self, fd: int, spec: FileSpec) -> str:
        """A FITS file: its full content, or (sparse) its template's non-zero blocks."""
        assert spec.product is not None
        if spec.product.kind in tables.KINDS:  # small text: the same, sparse or not
            text = tables.render(spec.product)
            _write_all(fd, text)
            return hashlib.sha256(text).hexdigest()
        if self.sparse:
            template = fits.template(spec.product)
            for offset, block in template.blocks:
                os.pwrite(fd, block, offset)
            os.ftruncate(fd, template.size)
            return template.sha256
        digest, written = hashlib.sha256(), 0
        for chunk in fits.render(spec.product, self.seed):
            digest.update(chunk)
            _write_all(fd, chunk)
            written += len(chunk)
        if written != spec.size:  # the layout promised this size to estimate() and progress
            raise RuntimeError(f"synth wrote {written} bytes for {spec.name}, not {spec.size}")
        return digest.hexdigest()

    @staticmethod
    def _fill(fd: int, size: int, rng: random.Random) -> str:
        digest = hashlib.sha256()
        left = size
        while left:
            chunk = rng.randbytes(min(left, CHUNK))
            digest.update(chunk)
            _write_all(fd, chunk)
            left -= len(chunk)
        return digest.hexdigest()

    def _write_bytes(self, dir_fd: int, name: str, data: bytes, mtime: int) -> None:
        fd = os.open(name, self.FLAGS, 0o644, dir_fd=dir_fd)
        try:
            _write_all(fd, data)
            os.utime(fd, ns=(mtime * 10**9,) * 2)
        finally:
            os.close(fd)

    def set_dir_mtimes(self, default: int) -> None:
        """Last, since creating an entry changes its directory's mtime."""
        for path, mtime in self.tally.dir_mtimes.items():
            stamp = (default if mtime is None else mtime) * 10**9
            os.utime(self.root / path, ns=(stamp, stamp))
        os.utime(self.root, ns=(default * 10**9,) * 2)
