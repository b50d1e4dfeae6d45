"""Writing a labeling job's OUTPUT: preparing it for a run, the done-set, atomic part files.

A part file appears whole or not at all (local files are written under a dot-name
and renamed; object stores publish an object only when its upload completes), so
a crash never leaves a half-file for readers or resume.
"""

from __future__ import annotations

import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UserError
from pipeline.results import PART_PREFIX, SCHEMA, TMP_PREFIX, entry_name, other_files, output_entries, part_files


def done_paths(output: str) -> set[str]:
    """Every path already written to ``output`` (error rows included: they are answered)."""
    done: set[str] = set()
    for part in part_files(output):
        fs, path = storage.filesystem(part)
        with fs.open(path, "rb") as f:
            done.update(pq.read_table(f, columns=["path"]).column("path").to_pylist())
    return done


def prepare_output(output: str, mode: str) -> set[str]:
    """Make ``output`` ready for a run in ``mode`` ('new', 'resume', 'overwrite'); return paths already done."""
    fs, root = storage.filesystem(output)
    try:
        fs.makedirs(root, exist_ok=True)
        probe = storage.join(root, f"{TMP_PREFIX}probe-{uuid.uuid4().hex}")
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"OUTPUT '{output}' is not writable ({type(err).__name__}: {err}); "
                        "pick a folder or bucket prefix you can write to") from err
    for stale in output_entries(output):  # leftovers of a killed run
        if entry_name(stale).startswith(TMP_PREFIX):
            fs.rm(stale)
    parts = part_files(output)
    if mode == "overwrite":
        for part in parts:
            part_fs, path = storage.filesystem(part)
            part_fs.rm(path)
        return set()
    if mode == "resume":
        return done_paths(output)
    foreign = other_files(output)
    if parts or foreign:
        raise UserError(f"OUTPUT '{output}' is not empty ({len(parts) + len(foreign)} files); "
                        "pass --resume to finish a previous run there, --overwrite to replace its "
                        "results, or choose another OUTPUT")
    return set()


class PartWriter:
    """Buffers result rows and commits them as atomic Parquet part files."""

    def __init__(self, output: str, rows_per_file: int, seconds_per_file: float):
        self.output = output
        self.rows_per_file = rows_per_file
        self.seconds_per_file = seconds_per_file
        self._buffer: list[pa.Table] = []
        self._rows = 0
        self._last_flush = time.monotonic()
        self.files_written = 0

    def add(self, table: pa.Table) -> None:
        self._buffer.append(table.select(SCHEMA.names).cast(SCHEMA))
        self._rows += table.num_rows
        if self._rows >= self.rows_per_file or time.monotonic() - self._last_flush >= self.seconds_per_file:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._rows:
            return
        table = pa.concat_tables(self._buffer)
        self._buffer, self._rows = [], 0
        name = f"{PART_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{self.files_written:05d}-{uuid.uuid4().hex[:8]}.parquet"
        fs, root = storage.filesystem(self.output)
        final = storage.join(root, name)
        if storage.is_url(self.output):
            with fs.open(final, "wb") as f:  # the object appears only when the upload completes
                pq.write_table(table, f)
        else:
            tmp = storage.join(root, TMP_PREFIX + name)
            pq.write_table(table, tmp)
            fs.mv(tmp, final)  # an atomic rename on one local filesystem
        self.files_written += 1
