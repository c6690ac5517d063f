"""The DESI data model variables for a release, and the NERSC paths, over any data root.

DESI code finds its inputs through environment variables (``$DESI_ROOT``,
``$DESI_SPECTRO_REDUX``...) defined by the DESI data model
(https://desidatamodel.readthedocs.io, "Environment Variables"), and many tutorials written
at NERSC hard-code ``/global/cfs/cdirs/desi/public/<release>/...``. Both must resolve to the
same files wherever the data is: a FUSE mount of the bucket, or a local copy.

The mirror's bucket is laid out as the pipeline uploads it (``make upload`` remaps): one
directory per release (``edr/``, ``dr1/``...) next to two shared directories that NERSC keeps
inside each release, ``raw_spectro_data/`` (NERSC: ``<release>/spectro/data``) and
``target/`` (NERSC: ``<release>/target``). A local copy may have either layout;
:func:`detect_layout` tells them apart by looking for ``raw_spectro_data``.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from desimirror.errors import UsageError

Layout = Literal["mirror", "nersc"]


@dataclass(frozen=True)
class Release:
    """A public data release and its spectroscopic production (``$SPECPROD``)."""

    name: str
    specprod: str | None


# Public releases and their main spectroscopic productions, as the data release pages name
# them; dr2's production is not public yet, so no $SPECPROD is guessed for it.
RELEASES: dict[str, Release] = {
    "edr": Release("edr", "fuji"),
    "dr1": Release("dr1", "iron"),
    "dr2": Release("dr2", None),
}

# Directory names at the top of the mirror that are shared by all releases, not releases.
SHARED_DIRS = ("raw_spectro_data", "target")

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def normalize_release(name: str, data: str | Path | None = None) -> str:
    """The release's directory name: lower case, known or present under ``data``.

    Names are case-insensitive (``EDR`` is ``edr``), as in the original image. A name that
    is not a known public release is accepted only if ``data/<name>`` exists, so a typo
    fails here with the list of choices instead of later as a missing file deep in a
    notebook.
    """
    low = name.strip().lower()
    if low in RELEASES:
        return low
    exists = data is not None and _NAME.match(low) and (Path(data) / low).is_dir()
    if exists and low not in SHARED_DIRS:
        return low
    known = ", ".join(RELEASES)
    where = f" and there is no directory {Path(data) / low}" if data is not None else ""
    raise UsageError(f"unknown release {name!r}: known releases are {known}{where}")


def data_warnings(data: str | Path, release: str) -> list[str]:
    """What looks wrong with ``data`` as the top of the mirror, in words a user can act on.

    Nothing here is fatal (a mount point may be mounted after ``env`` runs), but printing
    paths that lead nowhere without a word costs an afternoon: the directory missing, or
    the release directory given instead of the one above it (``DESI_ROOT=.../edr/edr``).
    """
    root = Path(data)
    if not root.exists():
        return [
            f"{root} does not exist: the variables point nowhere until the data is there "
            f"(e.g. 'desimirror mount s3://desidata {root}')"
        ]
    if not root.is_dir():
        return [f"{root} is not a directory"]
    if (root / release).is_dir():
        return []
    if root.name.lower() == release or (root / "spectro").is_dir():
        return [
            f"{root} looks like the release itself: DESI_ROOT would be {root / release}; "
            f"give the directory above it (--data {root.parent})"
        ]
    return [f"{root} has no {release}/ directory (it has: {_listing(root)})"]


def _listing(root: Path) -> str:
    names = sorted(name for name in _children(root) if not name.startswith("."))
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return shown or "nothing"


def detect_layout(data: str | Path, release: str) -> Layout:
    """``mirror`` when the shared directories sit next to the releases, else ``nersc``.

    Only a local copy laid out as at NERSC (``<release>/spectro/data`` inside the release)
    is ``nersc``; anything else, including a mount point that is not mounted yet, is taken
    to be the mirror's layout.
    """
    root = Path(data)
    if (root / "raw_spectro_data").is_dir():
        return "mirror"
    if (root / release / "spectro" / "data").is_dir():
        return "nersc"
    return "mirror"


def data_model_env(release: str, data: str | Path, layout: Layout = "mirror") -> dict[str, str]:
    """The data model variables for ``release`` with the data root at ``data``.

    ``release`` must already be normalised (see :func:`normalize_release`). The order is
    the order they are printed in; ``SPECPROD`` is set where the release has one production.
    """
    base = str(data).rstrip("/")
    root = f"{base}/{release}"
    if layout == "mirror":
        spectro_data = f"{base}/raw_spectro_data"
        target = f"{base}/target"
    else:
        spectro_data = f"{root}/spectro/data"
        target = f"{root}/target"
    env = {
        "DESI_RELEASE": release,
        "DESI_ROOT": root,
        "DESI_SPECTRO_DATA": spectro_data,
        "DESI_SPECTRO_REDUX": f"{root}/spectro/redux",
        "DESI_SPECTRO_CALIB": f"{root}/spectro/desi_spectro_calib",
        "DESI_TARGET": target,
        "DESI_SURVEYOPS": f"{root}/survey/ops/surveyops",
    }
    info = RELEASES.get(release)
    if info is not None and info.specprod:
        env["SPECPROD"] = info.specprod
    return env


def export_lines(env: dict[str, str]) -> list[str]:
    """``export NAME=value`` lines, shell-quoted, for ``eval "$(desimirror env ...)"``."""
    return [f"export {name}={shlex.quote(value)}" for name, value in env.items()]


@dataclass(frozen=True)
class Link:
    """One symbolic link to make: ``path`` → ``target``."""

    path: Path
    target: Path


def _children(directory: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(directory))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UsageError(f"cannot list {directory}: {exc.strerror or exc}") from None


def _release_dirs(data: Path) -> list[str]:
    return [
        name
        for name in _children(data)
        if name not in SHARED_DIRS and not name.startswith(".") and (data / name).is_dir()
    ]


def plan_nersc_links(data: str | Path, release: str, nersc_root: str | Path) -> list[Link]:
    """The links that make NERSC's paths resolve into ``data`` (mirror layout).

    Under ``<nersc_root>/public/<rel>/`` every entry of ``data/<rel>/`` is linked, with the
    two entries the mirror moved out put back: ``spectro/data`` → ``raw_spectro_data`` and
    ``target`` → ``target``. ``spectro/`` is therefore a real directory of links, so that
    ``spectro/redux`` and ``spectro/data`` both work. As the original image did,
    ``<nersc_root>/{spectro,survey,vac,target}`` lead to the selected release's copies.
    Only the top two levels of each release are listed: cheap on a mount.
    """
    data = Path(data)
    nersc = Path(nersc_root)
    public = nersc / "public"
    links: list[Link] = []
    releases = _release_dirs(data)
    if release not in releases:
        releases.append(release)
    for rel in sorted(releases):
        src = data / rel
        dst = public / rel
        planned: dict[Path, Path] = {}
        for name in _children(src):
            if name == "spectro" and (src / name).is_dir():
                for sub in _children(src / "spectro"):
                    planned[dst / "spectro" / sub] = src / "spectro" / sub
            else:
                planned[dst / name] = src / name
        for shared, at in (
            ("raw_spectro_data", dst / "spectro" / "data"),
            ("target", dst / "target"),
        ):
            if (data / shared).is_dir():
                planned[at] = data / shared
        links.extend(Link(path, target) for path, target in sorted(planned.items()))
    selected = public / release
    for name in ("spectro", "survey", "vac", "target"):
        links.append(Link(nersc / name, selected / name))
    return links


def make_links(links: Iterable[Link]) -> list[Link]:
    """Create the links, replacing only *links* that point elsewhere; returns those made.

    Parent directories are created as needed. A real file or directory in the way is never
    removed: that is an error naming it, because it may be someone's data.
    """
    made: list[Link] = []
    for link in links:
        path = link.path
        try:
            if path.parent.is_symlink():  # a link of ours from another layout: now a directory
                path.parent.unlink()
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create {path.parent}: {exc.strerror or exc}; run as root (the "
                "container does) or choose another --nersc-root"
            ) from None
        if path.is_symlink():
            if Path(os.readlink(path)) == link.target:
                continue
            path.unlink()
        elif path.exists():
            raise UsageError(
                f"{path} exists and is not a link; not replacing it (choose another "
                "--nersc-root or move it away)"
            )
        try:
            path.symlink_to(link.target)
        except OSError as exc:
            raise UsageError(f"cannot create link {path}: {exc.strerror or exc}") from None
        made.append(link)
    return made
