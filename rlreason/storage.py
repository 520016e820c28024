"""Locations of model directories, checkpoints and run outputs: a local path, a mount, or a bucket URL.

`storage_path` turns a config value into an `etils.epath.Path`, the path type orbax uses. A URL (gs://, s3://,
az://) keeps its scheme and is never resolved against the working directory: `pathlib.Path("gs://b/run")` is
`gs:/b/run`, and its `.absolute()` a folder under the working directory, which is where a pod's checkpoints
would silently land. Local paths are made absolute, as orbax's local writes want.

Reading and writing a URL path needs the bucket's fsspec file system (gcsfs for gs://: the `gcs` extra).
"""

from __future__ import annotations

import os

from etils import epath

URL_SCHEMES = ("gs://", "s3://", "az://")  # the cloud schemes etils.epath serves (besides hf://, read-only)


def is_url(location: str | os.PathLike) -> bool:
    """Whether `location` names cloud storage rather than a path on this machine (or a mount on it)."""
    return os.fspath(location).startswith(URL_SCHEMES)


def storage_path(location: str | os.PathLike) -> epath.Path:
    """`location` as an epath.Path: a URL as given, a local path made absolute."""
    path = epath.Path(location)
    return path if is_url(location) else path.absolute()
