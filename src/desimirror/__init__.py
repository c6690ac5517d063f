"""desimirror: mirror scientific data releases to S3, provably, and read them back on demand.

The Python API for reading a mirrored release lives in :mod:`desimirror.access.data`; the
pipeline stages (crawl, plan, upload, verify) are driven by the ``desimirror`` command.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("desimirror")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
