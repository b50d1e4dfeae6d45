"""Ship a local model folder or weights file from the driver to predictor actors on any node.

A path on the driver's disk does not exist on the other nodes of a real cluster. The driver reads
the files once and puts their bytes in Ray's object store (``ship``); each actor fetches them and
unpacks them into its node's cache, keyed by content, so actors on one node unpack once (``receive``).
Registry names and URLs are passed through: every node resolves those itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Union

from pipeline import storage

KEYWORDS = {"imagenet", "none"}  # --weights values that are not paths


@dataclass(frozen=True)
class ShippedFiles:
    source: str  # the path the user gave (kept as the model's name in the results)
    digest: str  # sha256 of the names and bytes: the cache key on the receiving node
    is_folder: bool  # a model folder (fine-tuned artifact) or a single file (weights)
    files: Any  # ObjectRef of {relative path: bytes}


Shippable = Union[str, ShippedFiles]


def ship(location: str) -> Shippable:
    """Put a local file or folder in the object store; anything else (names, URLs) is returned as is."""
    import ray

    from pipeline.models.registry import REGISTRY

    if (location in KEYWORDS or location.lower().replace("-", "_") in REGISTRY or storage.is_url(location)
            or not os.path.exists(location)):
        return location
    local = os.path.abspath(location)
    if os.path.isdir(local):
        paths = sorted(os.path.relpath(os.path.join(folder, name), local)
                       for folder, _, names in os.walk(local) for name in names)
    else:
        paths = [os.path.basename(local)]
    base = local if os.path.isdir(local) else os.path.dirname(local)
    files, digest = {}, hashlib.sha256()
    for relative in paths:
        with open(os.path.join(base, relative), "rb") as f:
            files[relative] = f.read()
        digest.update(relative.encode() + b"\0" + hashlib.sha256(files[relative]).digest())
    return ShippedFiles(location, digest.hexdigest()[:24], os.path.isdir(local), ray.put(files))


def receive(shipped: Shippable) -> str:
    """A local path holding what ``ship`` sent (unpacked once per node); a plain string is returned as is."""
    if isinstance(shipped, str):
        return shipped
    import ray

    name = os.path.basename(os.path.normpath(shipped.source)) or "model"
    folder = os.path.join(storage.cache_dir("shipped"), shipped.digest)
    target = os.path.join(folder, name)
    if not os.path.exists(target):
        staging = tempfile.mkdtemp(dir=storage.cache_dir("shipped"), prefix=".tmp-")
        try:
            for relative, data in ray.get(shipped.files).items():
                path = os.path.join(staging, name if not shipped.is_folder else os.path.join(name, relative))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
            try:
                os.rename(staging, folder)  # whole or not at all; another actor may have won the race
            except OSError:
                if not os.path.exists(target):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
