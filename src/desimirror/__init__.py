"""desimirror: mirror scientific data releases to S3, provably, and read them back on demand.

The Python API for reading a mirrored release lives in :mod:`desimirror.access.data`; the
pipeline stages (crawl, plan, upload, verify) are driven by the ``desimirror`` command.
"""


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed metadata only when asked for: reading it
    costs more than the rest of importing the package, which every command pays."""
    if name != "__version__":
        raise AttributeError(f"module 'desimirror' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("desimirror")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0.0.0"
