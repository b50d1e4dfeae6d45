"""Find the images a job should process, as a stream: a folder (recursive), a bucket prefix, a glob, a
list file (txt, csv, parquet), a glob of list files, or an S3 Inventory ``manifest.json``.

Works on local paths and any fsspec URL. ``open_listing`` checks SOURCE at once (a missing one is a
UserError before any work) and returns a ``SourceListing`` whose ``chunks()`` yield Arrow arrays of image
identities as they are found, so labeling starts on the first images while the listing goes on and
nothing here holds N paths: folders are walked one directory at a time, buckets listed with many LISTs
in flight (``pipeline.bucket_listing``), list files read in chunks (``pipeline.listing_tables``).
Repeats (a list file naming a path twice) are dropped with 8 bytes an image (``pipeline.identity_set``).
Files without an image extension are counted as ignored, not silently dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.errors import UserError
from pipeline.identity_set import IdentitySet, hash_identities
from pipeline.images import IMAGE_EXTENSIONS
from pipeline.storage_retry import DEFAULT_RETRIES, with_retries

CHUNK = 65_536  # identities per chunk handed on
# An absolute path or URL path that needs no normalising: no '//', no '.' or '..' segment, no trailing '/'.
_NEEDS_NORMALISING = r"//|/\.\.?(/|$)|/$"
_URL_NEEDS_NORMALISING = r"^[a-zA-Z0-9+.-]+://[^/]*(.*(//|/\.\.?(/|$)|/$)|$)"


@dataclass
class ListedChunk:
    paths: pa.Array  # image identities (strings), each once in the whole listing
    ignored: int  # entries in this part of SOURCE that are not images
    hashes: np.ndarray | None = None  # hash_identities(paths), when the listing computed them already


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


def identities(entries: pa.Array, base: str | None = None) -> pa.Array:
    """``image_identity`` of every entry, vectorised: entries already in their one spelling (an absolute clean
    path, or a clean s3:// URL) pass through Arrow untouched; only the others go through Python."""
    entries = pc.utf8_trim_whitespace(entries.cast(pa.string()))
    local_clean = pc.and_(pc.starts_with(entries, "/"),
                          pc.invert(pc.match_substring_regex(entries, _NEEDS_NORMALISING)))
    url_clean = pc.and_(pc.starts_with(entries, "s3://"),
                        pc.invert(pc.match_substring_regex(entries, _URL_NEEDS_NORMALISING)))
    clean = pc.or_(local_clean, url_clean)
    if pc.all(clean).as_py() is not False:
        return entries
    fixed = [value if ok else image_identity(value, base)
             for value, ok in zip(entries.to_pylist(), clean.to_pylist())]
    return pa.array(fixed, pa.string())


def image_mask(paths: pa.Array) -> pa.Array:
    """True where the path ends in an image extension (any case)."""
    lower = pc.utf8_lower(paths)
    mask = pc.ends_with(lower, IMAGE_EXTENSIONS[0])
    for extension in IMAGE_EXTENSIONS[1:]:
        mask = pc.or_(mask, pc.ends_with(lower, extension))
    return mask


class SourceListing:
    """SOURCE, checked; ``chunks()`` lists it (again, from the start, each time it is called)."""

    def __init__(self, source: str, kind: str, retries: int = DEFAULT_RETRIES, limit: int | None = None,
                 keep_seen: bool = False):
        self.source = source
        self.kind = kind  # folder | glob | list | file
        self.retries = retries
        self.limit = limit
        self.images = 0  # images handed on so far by the current chunks()
        self.ignored = 0  # other entries seen so far
        self.repeats = 0  # entries named again (list files): dropped
        # Every identity handed on: list files may name an image twice, and a resume counts the committed
        # images SOURCE no longer lists. A folder or bucket names each file once: no set on a first run.
        self.keep_seen = keep_seen or kind in ("list", "glob")
        self.seen = IdentitySet()

    def chunks(self) -> Iterator[ListedChunk]:
        """Image identities as found, each once, at most ``limit`` in all; UserError at the end when none."""
        self.images = self.ignored = self.repeats = 0
        self.seen = IdentitySet()
        for raw, base in self._raw():
            for start in range(0, len(raw), CHUNK):
                part = identities(raw.slice(start, CHUNK), base)
                images = part.filter(image_mask(part))
                ignored = len(part) - len(images)
                hashes = None
                if self.keep_seen:
                    hashes = hash_identities(images)
                    fresh = self.seen.add_new(hashes)
                    self.repeats += len(images) - int(fresh.sum())
                    images, hashes = images.filter(pa.array(fresh)), hashes[fresh]
                if self.limit is not None and self.images + len(images) > self.limit:
                    images = images.slice(0, self.limit - self.images)
                    hashes = None if hashes is None else hashes[:len(images)]
                self.images += len(images)
                self.ignored += ignored
                if len(images) or ignored:
                    yield ListedChunk(images, ignored, hashes)
                if self.limit is not None and self.images >= self.limit:
                    return
        if not self.images:
            raise UserError(f"SOURCE '{self.source}' holds no images ({self.ignored} other files); "
                            f"recognised extensions: {', '.join(IMAGE_EXTENSIONS)}")

    def _raw(self) -> Iterator[tuple[pa.Array, str | None]]:
        """(entries, base folder for relative entries) as SOURCE yields them."""
        fs, root = storage.filesystem(self.source)
        if self.kind == "file":
            yield pa.array([storage.full_url(fs, root, self.source)], pa.string()), None
        elif self.kind == "list":
            yield from _list_file_entries(fs, root, self.source, self.retries)
        elif self.kind == "glob":
            yield from self._glob(fs, root)
        else:
            yield from ((entries, None) for entries in _walk(fs, root, self.source, self.retries))

    def _glob(self, fs, root: str) -> Iterator[tuple[pa.Array, str | None]]:
        found = with_retries("glob", self.source, lambda: fs.glob(root, detail=True), self.retries)
        files = sorted(p for p, info in found.items() if info.get("type") != "directory")
        tables = [p for p in files if _is_table(p)]
        if files and len(tables) == len(files):  # a glob of list files: their entries are the listing
            for table in tables:
                yield from _list_file_entries(fs, table, storage.full_url(fs, table, self.source), self.retries)
            return
        for start in range(0, len(files), CHUNK):
            yield pa.array([storage.full_url(fs, p, self.source) for p in files[start:start + CHUNK]],
                           pa.string()), None


def open_listing(source: str, retries: int = DEFAULT_RETRIES, limit: int | None = None) -> SourceListing:
    """SOURCE checked for what it is (one round of storage calls, with retries); UserError if it is missing."""
    fs, root = storage.filesystem(source)
    if any(ch in root for ch in "*?["):
        return SourceListing(source, "glob", retries, limit)
    if not with_retries("check", source, lambda: fs.exists(root), retries):
        raise UserError(f"SOURCE '{source}' does not exist; pass a folder, a glob or a list file")
    if _is_table(root):
        kind = "list"
    elif with_retries("check", source, lambda: fs.isdir(root), retries):
        kind = "folder"
    else:
        kind = "file"
    return SourceListing(source, kind, retries, limit)


def list_images(source: str, retries: int = DEFAULT_RETRIES) -> list[str]:
    """Every image identity under ``source``, in memory: for small listings (fine-tuning data, tests)."""
    listing = open_listing(source, retries)
    return [p for chunk in listing.chunks() for p in chunk.paths.to_pylist()]


def _is_table(path: str) -> bool:
    from pipeline.listing_tables import is_table

    return is_table(path)


def _list_file_entries(fs, root: str, location: str, retries: int) -> Iterator[tuple[pa.Array, str]]:
    from pipeline.listing_tables import iter_table_entries

    base = storage.full_url(fs, fs._parent(root), location)  # relative entries are relative to the list file
    for entries in iter_table_entries(fs, root, location, retries=retries):
        yield entries, base


def _walk(fs, root: str, source: str, retries: int) -> Iterator[pa.Array]:
    """A folder's files, one directory (or one bucket page set) at a time, as full paths/URLs."""
    if not storage.is_url(source):
        yield from _walk_local(os.path.abspath(root))
        return
    if source.startswith("s3://"):
        from pipeline.bucket_listing import iter_bucket

        stream = iter_bucket(storage.full_url(fs, root, source), storage.storage_options(), retries=retries)
        if stream is not None:
            yield from stream
            return
    # Other stores (and S3 where obstore cannot be used): fsspec's own recursive listing, retried whole.
    found = with_retries("list", source, lambda: fs.find(root), retries)
    for start in range(0, len(found), CHUNK):
        yield pa.array([storage.full_url(fs, p, source) for p in found[start:start + CHUNK]], pa.string())


def _walk_local(root: str) -> Iterator[pa.Array]:
    pending = [root]
    while pending:
        folder = pending.pop()
        files, folders = [], []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=True):
                        folders.append(entry.path)
                    else:
                        files.append(entry.path)
        except (PermissionError, NotADirectoryError, FileNotFoundError):
            continue  # a folder we may not read (or gone meanwhile) holds nothing we could label
        pending.extend(sorted(folders, reverse=True))
        for start in range(0, len(files), CHUNK):
            yield pa.array(sorted(files)[start:start + CHUNK], pa.string())
