"""``desimirror.data``: the public name of :mod:`desimirror.access.data` (read a mirrored
release through fsspec without FUSE), kept for notebooks and user code."""

from desimirror.access.data import *  # noqa: F403
from desimirror.access.data import __all__  # noqa: F401
