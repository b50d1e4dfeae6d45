"""Find the images a job should process: a folder (recursive), a glob, or a list file.

Works on local paths and any fsspec URL. Files without an image extension are
counted as ignored, not silently dropped, so the summary can say so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import fsspec
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UserError
from pipeline.images import IMAGE_EXTENSIONS, is_image_path

LIST_FILE_SUFFIXES = (".txt", ".lst", ".csv", ".parquet")


@dataclass
class Listing:
    paths: list[str]  # image paths/URLs, sorted, each once
    ignored: int  # files skipped because they are not images


@lru_cache(maxsize=None)
def _filesystem_class(protocol: str):
    return fsspec.get_filesystem_class(protocol)


def image_identity(entry: str, base: str | None = None) -> str:
    """The one spelling of an image's location: what rows store and what resume compares.

    Local paths become absolute and normalised (``a/../b.jpg`` and ``./b.jpg`` name one file); URLs
    keep their protocol with a normalised path. A relative ``entry`` resolves against ``base`` (the
    folder of the list file that named it). Folder listings, list files and the done-set all use this.
    """
    if entry.startswith("file://"):
        entry = entry[len("file://"):]
    if storage.is_url(entry):
        protocol = entry.split("://", 1)[0]
        try:
            return f"{protocol}://{_filesystem_class(protocol)._strip_protocol(entry)}"
        except (ImportError, ValueError):
            return entry  # a store this machine cannot open: keep the spelling; reading it will say why
    if base is not None and not os.path.isabs(entry):
        if storage.is_url(base):
            protocol, _, rest = base.partition("://")
            return image_identity(f"{protocol}://{os.path.normpath(os.path.join(rest, entry))}")
        entry = os.path.join(base, entry)
    return os.path.abspath(entry)


def list_images(source: str) -> Listing:
    """All image paths under ``source``; UserError if it is missing or holds no image."""
    fs, root = storage.filesystem(source)
    if any(ch in root for ch in "*?["):
        found = [p for p in fs.glob(root) if not fs.isdir(p)]
    elif not fs.exists(root):
        raise UserError(f"SOURCE '{source}' does not exist; pass a folder, a glob or a list file")
    elif fs.isdir(root):
        found = fs.find(root)
    elif root.lower().endswith(LIST_FILE_SUFFIXES):
        return _from_list_file(source, fs, root)
    else:
        found = [root]
    paths = sorted({image_identity(storage.full_url(fs, p, source)) for p in found})
    images = [p for p in paths if is_image_path(p)]
    if not images:
        raise UserError(f"SOURCE '{source}' holds no images ({len(paths)} other files); "
                        f"recognised extensions: {', '.join(IMAGE_EXTENSIONS)}")
    return Listing(images, len(paths) - len(images))


def _from_list_file(source: str, fs, root: str) -> Listing:
    """A text file (one path per line, '#' comments) or a Parquet file with a ``path`` column."""
    if root.lower().endswith(".parquet"):
        with fs.open(root, "rb") as f:
            table = pq.read_table(f)
        if "path" not in table.column_names:
            raise UserError(f"list file '{source}' has no 'path' column (columns: {table.column_names})")
        entries = [p for p in table.column("path").to_pylist() if p]
    else:
        with fs.open(root, "r") as f:
            entries = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    base = storage.full_url(fs, fs._parent(root), source)  # relative entries are relative to the list file
    unique = list(dict.fromkeys(image_identity(p, base) for p in entries))  # the user's order, no repeats
    images = [p for p in unique if is_image_path(p)]
    if not images:
        raise UserError(f"list file '{source}' names no images ({len(unique)} entries)")
    return Listing(images, len(unique) - len(images))
