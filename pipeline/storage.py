"""One door to every storage: local paths and any fsspec URL (s3://, gs://, memory://, ...).

Everything that reads or writes user data goes through here, so a feature that
works on a local folder works on a bucket too.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import threading
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from pipeline import s3_reads

# Storage options (credentials, endpoint) for fsspec, shared by every call in
# this process; set once from --storage-options or the environment.
_STORAGE_OPTIONS: dict[str, Any] = {}
STORAGE_OPTIONS_ENV = "PIPELINE_STORAGE_OPTIONS"


def set_storage_options(options: dict[str, Any] | None) -> None:
    """Use these fsspec options (e.g. {"client_kwargs": {"endpoint_url": ...}}) for every URL."""
    _STORAGE_OPTIONS.clear()
    _STORAGE_OPTIONS.update(options or {})
    # Ray workers are separate processes: they read the same options from here.
    if options:
        os.environ[STORAGE_OPTIONS_ENV] = json.dumps(options)
    else:
        os.environ.pop(STORAGE_OPTIONS_ENV, None)


def storage_options() -> dict[str, Any]:
    if not _STORAGE_OPTIONS and os.environ.get(STORAGE_OPTIONS_ENV):
        _STORAGE_OPTIONS.update(json.loads(os.environ[STORAGE_OPTIONS_ENV]))
    return copy.deepcopy(_STORAGE_OPTIONS)  # botocore rewrites nested dicts it is given (retries)


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for ``path`` and the path within it."""
    options = storage_options() if is_url(path) else {}
    return url_to_fs(path, **options)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def full_url(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """Turn a path returned by ``fs`` back into a URL of the same kind as ``like``."""
    return fs.unstrip_protocol(path) if is_url(like) else path


def read_bytes(path: str) -> bytes:
    """The whole object in one request: S3 through obstore where it resolves what s3fs would (a quarter
    of the CPU per GET, ``pipeline/s3_reads.py``), else fsspec; asking s3fs from byte 0 keeps it from
    first asking the size (a HEAD)."""
    if path.startswith("s3://"):
        data = s3_reads.read(path, storage_options())
        if data is not None:
            return data
    fs, p = filesystem(path)
    try:
        return fs.cat_file(p, start=0)
    except OSError as err:
        if getattr(err, "errno", None) == errno.EINVAL and "range" in str(err).lower():
            return fs.cat_file(p)  # an empty object has no byte 0 to start from
        raise


def publish(location: str, data: bytes) -> None:
    """Write ``data`` to ``location`` whole or not at all: one PUT on object stores (never a streamed upload,
    which fsspec commits even when the writer raised), a temporary file and a rename locally."""
    fs, path = filesystem(location)
    if is_url(location):
        fs.pipe_file(path, data)
        return
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{threading.get_ident()}-{name}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # an atomic rename on one local filesystem


def prepare_file_target(location: str, what: str, suggested_name: str) -> None:
    """Check, before any work, that a file can be written at ``location``: UserError (exit 2, one line) when it
    names a folder, or its local folder cannot be created or written. A missing local folder is created;
    object stores need none, and their permissions show only on the write itself (``publish``)."""
    from pipeline.errors import UserError

    fs, path = filesystem(location)
    try:
        if fs.isdir(path):
            raise UserError(f"{what} '{location}' is a folder; give a file name, e.g. "
                            f"'{join(location, suggested_name)}'")
        if is_url(location):
            return
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write {what} '{location}': {err.strerror or err}; choose a folder you can "
                        "write to") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} '{location}': the folder '{folder}' is not writable; choose a "
                        "folder you can write to")


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.exists(p)


def cache_dir(kind: str) -> str:
    """A per-machine cache folder (``$PIPELINE_CACHE_DIR`` or ~/.cache/pipeline)."""
    root = os.environ.get("PIPELINE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pipeline")
    path = os.path.join(root, kind)
    os.makedirs(path, exist_ok=True)
    return path


def local_copy(path: str) -> str:
    """A local path holding ``path``'s bytes: the path itself when local, else a cached download.

    The cache key includes the remote file's size and modification stamp, so a
    replaced object is fetched again while an unchanged one is fetched once per machine.
    """
    if not is_url(path):
        return path[len("file://"):] if path.startswith("file://") else path
    fs, p = filesystem(path)
    info = fs.info(p)
    stamp = {k: str(info.get(k)) for k in ("size", "ETag", "etag", "mtime", "LastModified", "created")}
    key = hashlib.sha256(json.dumps([path, stamp], sort_keys=True).encode()).hexdigest()[:20]
    folder = os.path.join(cache_dir("downloads"), key)
    target = os.path.join(folder, os.path.basename(p.rstrip("/")))
    if not os.path.exists(target):
        os.makedirs(folder, exist_ok=True)
        tmp = f"{target}.{os.getpid()}.part"
        fs.get_file(p, tmp)
        os.replace(tmp, target)
    return target
