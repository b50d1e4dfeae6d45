"""What is left to label, found while labeling goes on, in bounded memory.

A background thread takes the listing as it streams (from SOURCE, or the listing recorded in OUTPUT),
records it in OUTPUT when it is fresh, drops every identity already committed (a hash look-up against the
done-set, ``pipeline.identity_set``) and spills the rest to Arrow files on the driver's local disk. The
job takes paths from the spill a wave at a time (``take``), so labeling starts on the first images while
the listing goes on, a listing faster than labeling waits on disk rather than in memory, and the driver
never holds more than one wave's paths.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from typing import Iterator

import pyarrow as pa

from pipeline.identity_set import IdentitySet, hash_identities
from pipeline.label.listing_record import ListingRecorder, RecordedListing, iter_recorded
from pipeline.listing import ListedChunk, SourceListing
from pipeline.storage_retry import DEFAULT_RETRIES


class TodoFeed:
    """Listed -> not yet committed -> spilled to local disk -> taken in waves. Counters for progress."""

    def __init__(self, listing: SourceListing | None, done: IdentitySet, recorder: ListingRecorder | None = None,
                 recorded: tuple[str, RecordedListing] | None = None, retries: int = DEFAULT_RETRIES, spill: bool = True):
        self.listing = listing  # a fresh listing of SOURCE, or None when the recorded one is reused
        if listing is not None and len(done):
            listing.keep_seen = True  # to count the committed images SOURCE no longer lists
        self.recorded = recorded  # (OUTPUT, its complete recorded listing) to reuse
        self.done = done
        self.recorder = recorder
        self.retries = retries
        self.spill = spill  # False: count what is left (a dry run), keep none of it
        self.listed = recorded[1].images if recorded else 0  # images listed so far (all of them when reused)
        self.ignored = recorded[1].ignored if recorded else 0
        self.skipped = 0  # listed and already committed
        self.todo = 0  # listed and left to label, so far
        self.taken = 0  # handed to waves
        self.finished = False  # the listing has ended and everything left is spilled
        self.error: BaseException | None = None
        self.removed = 0  # committed images a fresh listing no longer names (for --relist's report)
        self._spill = tempfile.mkdtemp(prefix="pipeline-todo-")
        self._files: list[tuple[str, int]] = []  # (spill file, rows), in listing order
        self._cursor = (0, 0)  # (file index, row) of the next path to take
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="todo-feed")

    def __enter__(self) -> "TodoFeed":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)  # a listing stuck in a storage call is a daemon: it dies with the job
        shutil.rmtree(self._spill, ignore_errors=True)

    # -- the background side --------------------------------------------------------------------
    def _chunks(self) -> Iterator[ListedChunk]:
        if self.recorded is not None:
            output, record = self.recorded
            for paths in iter_recorded(output, record, self.retries):
                yield ListedChunk(paths, 0)
        else:
            yield from self.listing.chunks()

    def _run(self) -> None:
        try:
            for chunk in self._chunks():
                if self._stop.is_set():
                    return
                if self.recorder is not None and len(chunk.paths):
                    self.recorder.add(chunk.paths)
                hashes = chunk.hashes if chunk.hashes is not None else hash_identities(chunk.paths)
                fresh = chunk.paths.filter(pa.array(~self.done.contains(hashes))) if len(self.done) else chunk.paths
                self._spill_paths(fresh)
                with self._cond:
                    if self.recorded is None:
                        self.listed += len(chunk.paths)
                        self.ignored += chunk.ignored
                    self.skipped += len(chunk.paths) - len(fresh)
                    self.todo += len(fresh)
                    self._cond.notify_all()
            if self.listing is not None:
                if self.recorder is not None:
                    self.recorder.finish(self.listing.source, self.listing.limit, self.listing.images,
                                         self.listing.ignored, self.listing.repeats)
                if len(self.done):
                    self.removed = self.done.count_missing_from(self.listing.seen)
                self.listing.seen = IdentitySet()  # its memory back: the listing has ended
        except BaseException as err:  # noqa: BLE001 - handed to the job at its next take()
            with self._cond:
                self.error = err
        finally:
            with self._cond:
                self.finished = True
                self._cond.notify_all()

    def _spill_paths(self, paths: pa.Array) -> None:
        if not len(paths) or not self.spill:
            return
        name = os.path.join(self._spill, f"todo-{len(self._files):07d}.arrow")
        table = pa.table({"path": paths.cast(pa.string())})
        with pa.OSFile(name, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        with self._cond:
            self._files.append((name, len(paths)))

    # -- the job's side ---------------------------------------------------------------------------
    @property
    def available(self) -> int:
        return self.todo - self.taken

    def wait_for_work(self, timeout: float | None = None) -> bool:
        """Block until a path is left to take (True) or the listing ended with none (False); raise its error.
        With ``timeout``: True also when the listing is still running after that many seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self.available and not self.finished and self.error is None:
                if deadline is not None and time.monotonic() >= deadline:
                    return True
                self._cond.wait(0.1)
            if self.error is not None:
                raise self.error
            return self.available > 0

    def wait_until_finished(self) -> None:
        """Block until the listing has ended; raise its error."""
        with self._cond:
            while not self.finished:
                self._cond.wait(0.1)
            if self.error is not None:
                raise self.error

    def take(self, most: int) -> pa.Array | None:
        """Up to ``most`` paths of those spilled so far (waiting for one if need be); None when all are taken."""
        if not self.wait_for_work():
            return None
        parts: list[pa.Array] = []
        wanted = most
        with self._cond:
            files = list(self._files)
        index, row = self._cursor
        while wanted and index < len(files):
            name, rows = files[index]
            with pa.OSFile(name, "rb") as source:  # read into memory: the file goes once it is taken
                column = pa.ipc.open_file(source).read_all().column("path").combine_chunks()
            piece = column.slice(row, wanted)
            parts.append(piece)
            wanted -= len(piece)
            row += len(piece)
            if row >= rows:
                os.unlink(name)  # the disk back as the job goes
                index, row = index + 1, 0
        self._cursor = (index, row)
        paths = pa.concat_arrays(parts) if parts else pa.array([], pa.string())
        with self._cond:
            self.taken += len(paths)
        return paths
