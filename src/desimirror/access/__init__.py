"""Access to a mirrored release: FUSE mounts, the DESI environment, and JupyterLab.

- :mod:`desimirror.access.config`: every ``DESIMIRROR_*`` setting, read in one place.
- :mod:`desimirror.access.env`: the data model variables (``$DESI_ROOT``...) for a release
  and the links that make NERSC's hard-coded paths work.
- :mod:`desimirror.access.mount`: read-only mounts of the bucket (rclone, or mountpoint-s3)
  or of a local copy, and their unmounting.
- :mod:`desimirror.access.jupyter`: ``desimirror jupyter``, the container's entry point.

Python access without a mount is :mod:`desimirror.access.data`.
"""

from desimirror.access.config import AccessConfig, load_config
from desimirror.access.env import data_model_env, export_lines, normalize_release

__all__ = ["AccessConfig", "data_model_env", "export_lines", "load_config", "normalize_release"]
