"""Writing a labeling job's OUTPUT: preparing it for a run, the done-set, atomic part files.

A part file appears whole or not at all: its bytes are built in memory, then
published by a rename (local) or by one PUT (object stores; never a streamed
``fs.open(..., "wb")``, which fsspec commits even when the writer raised). Each
part carries the manifest's run id in its Parquet metadata, so files this tool
did not write are recognised, named, and never deleted.
"""

from __future__ import annotations

import io
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UserError
from pipeline.label.manifest import RunManifest, manifest_path, read_manifest, write_manifest
from pipeline.identity_set import IdentitySet, hash_identities
from pipeline.parquet_files import read_parquet
from pipeline.storage_retry import DEFAULT_RETRIES, StorageError, with_retries
from pipeline.results import (
    PART_OWNER_KEY,
    TMP_PREFIX,
    entry_name,
    other_files,
    output_entries,
    part_files,
    result_schema,
)


@dataclass
class OutputState:
    manifest: RunManifest  # the manifest this run writes under (the existing one on resume)
    done: IdentitySet  # hashes of the image identities already answered in OUTPUT (8 bytes each)
    retried: int = 0  # error rows removed for --retry-errors
    committed: int = 0  # rows in OUTPUT's part files when the run started


@dataclass
class PartContents:
    paths: pa.Array  # the rows' paths (their identities)
    errors: pa.Array  # bool: True where the row is an error row
    run_id: str | None  # the owner tag, None when the file is not ours


PARTS_READ_IN_FLIGHT = 8  # part files read at once: their reads wait on storage, not on this process


def read_part(part: str, retries: int = DEFAULT_RETRIES) -> PartContents:
    """The paths, error flags and owner tag of one part file, as Arrow; UserError naming it when damaged."""
    fs, path = storage.filesystem(part)

    def read():
        with fs.open(path, "rb") as f:
            table = read_parquet(f, columns=lambda names: [c for c in ("path", "error") if c in names])
        return table.schema.metadata or {}, table

    try:
        metadata, table = with_retries("read part file", part, read, retries)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise UserError(f"part file '{part}' in OUTPUT is damaged ({type(err).__name__}: {err}); "
                        "move it away and re-run with --resume to label its images again") from err
    owner = metadata.get(PART_OWNER_KEY)
    if "path" not in table.column_names or "error" not in table.column_names:
        owner = None
    paths = table.column("path").combine_chunks() if "path" in table.column_names else pa.array([], pa.string())
    errors = (pc.is_valid(table.column("error")).combine_chunks() if "error" in table.column_names
              else pa.array([], pa.bool_()))
    return PartContents(paths, errors, owner.decode() if owner else None)


@dataclass
class PartScan:
    ours: list[str]  # part files tagged with this OUTPUT's run id
    foreign: list[str]  # the others
    with_errors: list[str]  # ours holding error rows
    done: IdentitySet  # identities answered in ours (without error rows when asked)
    rows: int = 0  # rows in ours


def scan_parts(parts: list[str], manifest: RunManifest | None, skip_errors: bool = False,
               retries: int = DEFAULT_RETRIES) -> PartScan:
    """Read every part's path and error columns, several at once, and keep only their hashes: the done-set of a
    resume at 8 bytes a committed row, never one Python object per row."""
    scan = PartScan([], [], [], IdentitySet())
    with ThreadPoolExecutor(PARTS_READ_IN_FLIGHT) as pool:
        for part, contents in zip(parts, pool.map(lambda p: read_part(p, retries), parts)):
            if manifest is None or contents.run_id != manifest.run_id:
                scan.foreign.append(part)
                continue
            scan.ours.append(part)
            scan.rows += len(contents.paths)
            paths = contents.paths
            if pc.any(contents.errors).as_py():
                scan.with_errors.append(part)
                if skip_errors:
                    paths = paths.filter(pc.invert(contents.errors))
            scan.done.add(hash_identities(paths))
    return scan


def _refuse_foreign(output: str, foreign: list[str], what: str) -> None:
    names = ", ".join(f"'{entry_name(p)}'" for p in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
    raise UserError(f"OUTPUT '{output}' holds {len(foreign)} file(s) that 'pipeline label' did not write "
                    f"for this OUTPUT ({names}); {what}")


def check_writable(output: str, retries: int = DEFAULT_RETRIES) -> None:
    """Create OUTPUT's folder and prove we can write there, or UserError before any other work."""
    fs, root = storage.filesystem(output)

    def probe() -> None:
        fs.makedirs(root, exist_ok=True)
        location = storage.join(root, f"{TMP_PREFIX}probe-{uuid.uuid4().hex}")
        fs.pipe_file(location, b"ok")
        try:
            fs.rm(location)
        except FileNotFoundError:
            pass  # the lease holder of a concurrent run cleaned it up as a leftover

    try:
        with_retries("write a probe to", output, probe, retries)
    except StorageError:
        raise
    except Exception as err:  # noqa: BLE001
        raise UserError(f"OUTPUT '{output}' is not writable ({type(err).__name__}: {err}); "
                        "pick a folder or bucket prefix you can write to") from err


def _remove_temporaries(output: str, retries: int) -> None:
    """Leftovers of a killed run; only called while this run holds OUTPUT's lease."""
    fs, _ = storage.filesystem(output)
    for stale in output_entries(output, retries):
        if entry_name(stale).startswith(TMP_PREFIX):
            with_retries("remove", stale, lambda: _rm_if_there(fs, stale), retries)


def _rm_if_there(fs, path: str) -> None:
    try:
        fs.rm(path)
    except FileNotFoundError:
        pass


def prepare_output(output: str, mode: str, wanted: RunManifest, retry_errors: bool = False,
                   retries: int = DEFAULT_RETRIES) -> OutputState:
    """Make ``output`` ready for a run in ``mode`` ('new', 'resume', 'overwrite'); call it holding the lease.
    Every refusal about OUTPUT is raised here, before SOURCE is listed."""
    _remove_temporaries(output, retries)
    existing = read_manifest(output, retries)
    parts = part_files(output, retries)
    foreign_other = other_files(output, retries)
    if mode == "new":
        if parts or foreign_other or existing is not None:
            count = len(parts) + len(foreign_other) + (existing is not None)
            raise UserError(f"OUTPUT '{output}' is not empty ({count} files); "
                            "pass --resume to finish a previous run there, --overwrite to replace its "
                            "results, or choose another OUTPUT")
        return OutputState(wanted, IdentitySet())
    if foreign_other:
        _refuse_foreign(output, foreign_other, "pandas would read them as results; move them away or choose "
                        "another OUTPUT")
    if mode == "resume" and existing is not None:
        differences = existing.differences(wanted)
        if differences:  # judged before any part is read: one small file, not millions of rows
            raise UserError(f"--resume would mix rows made with other settings into OUTPUT '{output}' ("
                            + "; ".join(differences) + "); resume with the original settings (see "
                            "'pipeline show OUTPUT'), --overwrite, or choose another OUTPUT")
    scan = scan_parts(parts, existing, skip_errors=retry_errors and mode == "resume", retries=retries)
    if scan.foreign:
        hint = ("they have no manifest beside them (written by an older version, or copied in)"
                if existing is None else "they belong to another run or are not our Parquet files")
        _refuse_foreign(output, scan.foreign, f"{hint}; move them away or choose another OUTPUT")
    if mode == "overwrite":
        fs, _ = storage.filesystem(output)
        for part in scan.ours:
            with_retries("remove", part, lambda: _rm_if_there(fs, storage.filesystem(part)[1]), retries)
        if existing is not None:
            with_retries("remove", manifest_path(output),
                         lambda: _rm_if_there(fs, storage.filesystem(manifest_path(output))[1]), retries)
        return OutputState(wanted, IdentitySet())
    # resume
    if existing is None:
        return OutputState(wanted, IdentitySet())  # a run killed before its first part: nothing to compare with
    existing.package_version = wanted.package_version  # recorded, not compared: the manifest says who wrote last
    retried = _drop_error_rows(output, existing, scan.with_errors, retries) if retry_errors else 0
    return OutputState(existing, scan.done, retried, scan.rows - retried)


def _drop_error_rows(output: str, manifest: RunManifest, parts: list[str], retries: int) -> int:
    """Rewrite each part holding error rows without them (new part first, then the old one goes)."""
    dropped = 0
    writer = PartWriter(output, manifest, rows_per_file=1 << 62, seconds_per_file=float("inf"), retries=retries)
    for part in parts:
        fs, path = storage.filesystem(part)

        def read() -> pa.Table:
            with fs.open(path, "rb") as f:
                return read_parquet(f)

        table = with_retries("read part file", part, read, retries)
        keep = pc.is_null(table.column("error"))
        dropped += table.num_rows - pc.sum(keep).as_py()
        kept = table.filter(keep)
        if kept.num_rows:
            writer.add(kept)
            writer.flush()
        # A crash here leaves the kept rows twice; they are ok rows of the same paths, and the next
        # --retry-errors or resume sees them as done: no path is labeled twice, readers may see a repeat.
        with_retries("remove", part, lambda: _rm_if_there(fs, path), retries)
    return dropped


class PartWriter:
    """Buffers result rows and commits them as atomic Parquet part files tagged with the run id."""

    def __init__(self, output: str, manifest: RunManifest, rows_per_file: int, seconds_per_file: float,
                 before_commit=lambda: None, retries: int = DEFAULT_RETRIES):
        self.output = output
        self.manifest = manifest
        self.rows_per_file = rows_per_file
        self.seconds_per_file = seconds_per_file
        self.before_commit = before_commit  # e.g. the lease check: raise to stop before publishing
        self.schema = result_schema(manifest.embeddings)  # the manifest decides: resumes keep one schema
        self._buffer: list[pa.Table] = []
        self._rows = 0
        self._last_flush = time.monotonic()
        self._manifest_written = False
        self.files_written = 0
        self.rows_committed = 0  # rows in the part files this writer published
        self.retries = retries

    def add(self, table: pa.Table) -> None:
        """Buffer ``table``; commit a part of exactly ``rows_per_file`` rows each time that many are buffered,
        and whatever is buffered once ``seconds_per_file`` have passed since the last commit."""
        self._check_weights(table)
        self._buffer.append(table.select(self.schema.names).cast(self.schema))
        self._rows += table.num_rows
        while self._rows >= self.rows_per_file:
            self._commit(self.rows_per_file)
        if self._rows and time.monotonic() - self._last_flush >= self.seconds_per_file:
            self.flush()

    def _check_weights(self, table: pa.Table) -> None:
        """Every row must come from the weights the manifest names; the first rows fill it in."""
        digests = {d for d in table.column("weights_digest").to_pylist() if d}
        if self.manifest.weights_digest is None and len(digests) == 1:
            self.manifest.weights_digest = digests.pop()
            self._manifest_written = False
            return
        foreign = digests - {self.manifest.weights_digest}
        if foreign:
            raise UserError(f"the predictors loaded weights {sorted(foreign)[0]}, but OUTPUT '{self.output}' "
                            f"holds rows made with {self.manifest.weights_digest} (same --model/--weights, "
                            "different file contents); nothing more was written. Use the original weights, "
                            "--overwrite, or another OUTPUT")

    def flush(self) -> None:
        """Commit everything buffered, in parts of at most ``rows_per_file`` rows."""
        self._last_flush = time.monotonic()
        while self._rows:
            self._commit(min(self._rows, self.rows_per_file))

    def _commit(self, rows: int) -> None:
        """Publish the first ``rows`` buffered rows as one part file."""
        self._last_flush = time.monotonic()
        self.before_commit()
        if not self._manifest_written:
            write_manifest(self.output, self.manifest, self.retries)  # always before the part that relies on it
            self._manifest_written = True
        buffered = pa.concat_tables(self._buffer)
        table, rest = buffered.slice(0, rows), buffered.slice(rows)
        self._buffer, self._rows = ([rest] if rest.num_rows else []), rest.num_rows
        table = table.replace_schema_metadata({PART_OWNER_KEY: self.manifest.run_id.encode()})
        sink = io.BytesIO()
        pq.write_table(table, sink)  # complete bytes in memory before anything is published
        name = f"part-{time.strftime('%Y%m%d-%H%M%S')}-{self.files_written:05d}-{uuid.uuid4().hex[:8]}.parquet"
        final = storage.join(self.output, name)
        data = sink.getvalue()
        with_retries("upload part file", final, lambda: storage.publish(final, data), self.retries)
        self.files_written += 1
        self.rows_committed += table.num_rows
