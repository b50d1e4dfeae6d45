"""The listing kept with a run: ``OUTPUT/_pipeline_listing/``, so a resume need not list SOURCE again.

A run records every image identity it listed, as it lists, in Parquet segments beside its rows
(``segment-000000.parquet``, ...; the leading underscore keeps pandas from reading them as results), and
writes ``_complete.json`` (source, limit, counts) when the listing has ended. A ``--resume`` with the same
SOURCE and ``--limit`` reads the segments instead of listing a bucket of 100M objects again; ``--relist``
or another SOURCE lists afresh and replaces them. A listing cut short (the run was killed while listing)
has no ``_complete.json`` and is never reused. Written only by the lease holder.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from dataclasses import asdict, dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.parquet_files import read_parquet
from pipeline.results import LISTING_NAME
from pipeline.storage_retry import DEFAULT_RETRIES, with_retries

COMPLETE_NAME = "_complete.json"
SEGMENT_ROWS = 262_144  # identities per segment (a few MB of Parquet)
SEGMENT_SECONDS = 5.0  # a slow listing still publishes what it has this often
FORMAT = 1


@dataclass
class RecordedListing:
    source: str  # SOURCE as given to the run that listed
    limit: int | None  # its --limit
    images: int  # identities recorded
    ignored: int  # other files the listing skipped
    repeats: int  # entries named more than once, dropped
    segments: int  # segment files, numbered from 0
    created: str  # when the listing ended (UTC)
    format: int = FORMAT


def listing_folder(output: str) -> str:
    return storage.join(output, LISTING_NAME)


def _segment(output: str, index: int) -> str:
    return storage.join(listing_folder(output), f"segment-{index:06d}.parquet")


def read_record(output: str, retries: int = DEFAULT_RETRIES) -> RecordedListing | None:
    """The complete listing recorded in OUTPUT, or None (none, cut short, or unreadable: list again)."""
    location = storage.join(listing_folder(output), COMPLETE_NAME)
    fs, path = storage.filesystem(location)
    try:
        data = with_retries("read the recorded listing", location, lambda: fs.cat_file(path), retries)
        record = RecordedListing(**json.loads(data))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return None  # damaged: a fresh listing replaces it
    return record if record.format == FORMAT else None


def iter_recorded(output: str, record: RecordedListing, retries: int = DEFAULT_RETRIES) -> Iterator[pa.Array]:
    """The recorded identities, segment by segment."""
    for index in range(record.segments):
        location = _segment(output, index)
        fs, path = storage.filesystem(location)

        def read() -> pa.Table:
            with fs.open(path, "rb") as f:
                return read_parquet(f, columns=["path"])

        yield with_retries("read the recorded listing", location, read, retries).column("path").combine_chunks()


class ListingRecorder:
    """Records a listing as it streams: ``add`` chunks, ``finish`` when it has ended."""

    def __init__(self, output: str, retries: int = DEFAULT_RETRIES):
        self.output = output
        self.retries = retries
        self.segments = 0
        self._buffer: list[pa.Array] = []
        self._rows = 0
        self._last = 0.0  # the first chunk is published at once
        self._clear()

    def _clear(self) -> None:
        fs, root = storage.filesystem(listing_folder(self.output))

        def clear() -> None:
            try:
                fs.rm(root, recursive=True)
            except FileNotFoundError:
                pass
            if not storage.is_url(self.output):
                fs.makedirs(root, exist_ok=True)

        with_retries("clear the recorded listing", listing_folder(self.output), clear, self.retries)

    def add(self, paths: pa.Array) -> None:
        self._buffer.append(paths)
        self._rows += len(paths)
        if self._rows >= SEGMENT_ROWS or time.monotonic() - self._last >= SEGMENT_SECONDS:
            self._flush()

    def _flush(self) -> None:
        self._last = time.monotonic()
        if not self._rows:
            return
        table = pa.table({"path": pa.concat_arrays([a.cast(pa.string()) for a in self._buffer])})
        self._buffer, self._rows = [], 0
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        data, location = sink.getvalue(), _segment(self.output, self.segments)
        with_retries("record the listing in", location, lambda: storage.publish(location, data), self.retries)
        self.segments += 1

    def finish(self, source: str, limit: int | None, images: int, ignored: int, repeats: int) -> None:
        self._flush()
        record = RecordedListing(source, limit, images, ignored, repeats, self.segments,
                                 dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        data = json.dumps(asdict(record), indent=2).encode()
        location = storage.join(listing_folder(self.output), COMPLETE_NAME)
        with_retries("record the listing in", location, lambda: storage.publish(location, data), self.retries)
