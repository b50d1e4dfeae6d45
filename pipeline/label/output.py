"""Writing a labeling job's OUTPUT: preparing it for a run, the done-set, atomic part files.

A part file appears whole or not at all: its bytes are built in memory, then
published by a rename (local) or by one PUT (object stores; never a streamed
``fs.open(..., "wb")``, which fsspec commits even when the writer raised). Each
part carries the manifest's run id in its Parquet metadata, so files this tool
did not write are recognised, named, and never deleted.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UserError
from pipeline.label.manifest import RunManifest, manifest_path, read_manifest, write_manifest
from pipeline.listing import image_identity
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
    done: set[str]  # image identities already answered in OUTPUT
    retried: int = 0  # error rows removed for --retry-errors


@dataclass
class PartContents:
    paths: list[str]
    errors: list[bool]  # True where the row is an error row
    run_id: str | None  # the owner tag, None when the file is not ours


def read_part(part: str) -> PartContents:
    """The paths, error flags and owner tag of one part file; UserError naming it when it is damaged."""
    fs, path = storage.filesystem(part)
    try:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            metadata = parquet.schema_arrow.metadata or {}
            columns = [c for c in ("path", "error") if c in parquet.schema_arrow.names]
            table = parquet.read(columns=columns)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise UserError(f"part file '{part}' in OUTPUT is damaged ({type(err).__name__}: {err}); "
                        "move it away and re-run with --resume to label its images again") from err
    owner = metadata.get(PART_OWNER_KEY)
    if "path" not in table.column_names or "error" not in table.column_names:
        owner = None
    paths = table.column("path").to_pylist() if "path" in table.column_names else []
    errors = [e is not None for e in table.column("error").to_pylist()] if "error" in table.column_names else []
    return PartContents(paths, errors, owner.decode() if owner else None)


def _ours(parts: list[str], manifest: RunManifest | None) -> tuple[dict[str, PartContents], list[str]]:
    """Split part files into ours (tagged with this OUTPUT's run id) and foreign ones."""
    ours, foreign = {}, []
    for part in parts:
        contents = read_part(part)
        if manifest is not None and contents.run_id == manifest.run_id:
            ours[part] = contents
        else:
            foreign.append(part)
    return ours, foreign


def _refuse_foreign(output: str, foreign: list[str], what: str) -> None:
    names = ", ".join(f"'{entry_name(p)}'" for p in foreign[:5]) + (" ..." if len(foreign) > 5 else "")
    raise UserError(f"OUTPUT '{output}' holds {len(foreign)} file(s) that 'pipeline label' did not write "
                    f"for this OUTPUT ({names}); {what}")


def check_writable(output: str) -> None:
    """Create OUTPUT's folder and prove we can write there, or UserError before any other work."""
    fs, root = storage.filesystem(output)
    try:
        fs.makedirs(root, exist_ok=True)
        probe = storage.join(root, f"{TMP_PREFIX}probe-{uuid.uuid4().hex}")
        fs.pipe_file(probe, b"ok")
        try:
            fs.rm(probe)
        except FileNotFoundError:
            pass  # the lease holder of a concurrent run cleaned it up as a leftover
    except Exception as err:  # noqa: BLE001
        raise UserError(f"OUTPUT '{output}' is not writable ({type(err).__name__}: {err}); "
                        "pick a folder or bucket prefix you can write to") from err


def _remove_temporaries(output: str) -> None:
    """Leftovers of a killed run; only called while this run holds OUTPUT's lease."""
    fs, _ = storage.filesystem(output)
    for stale in output_entries(output):
        if entry_name(stale).startswith(TMP_PREFIX):
            fs.rm(stale)


def prepare_output(output: str, mode: str, wanted: RunManifest, retry_errors: bool = False) -> OutputState:
    """Make ``output`` ready for a run in ``mode`` ('new', 'resume', 'overwrite'); call it holding the lease."""
    _remove_temporaries(output)
    existing = read_manifest(output)
    parts = part_files(output)
    foreign_other = other_files(output)
    if mode == "new":
        if parts or foreign_other or existing is not None:
            count = len(parts) + len(foreign_other) + (existing is not None)
            raise UserError(f"OUTPUT '{output}' is not empty ({count} files); "
                            "pass --resume to finish a previous run there, --overwrite to replace its "
                            "results, or choose another OUTPUT")
        return OutputState(wanted, set())
    if foreign_other:
        _refuse_foreign(output, foreign_other, "pandas would read them as results; move them away or choose "
                        "another OUTPUT")
    ours, foreign = _ours(parts, existing)
    if foreign:
        hint = ("they have no manifest beside them (written by an older version, or copied in)"
                if existing is None else "they belong to another run or are not our Parquet files")
        _refuse_foreign(output, foreign, f"{hint}; move them away or choose another OUTPUT")
    if mode == "overwrite":
        fs, _ = storage.filesystem(output)
        for part in ours:
            fs.rm(storage.filesystem(part)[1])
        if existing is not None:
            fs.rm(storage.filesystem(manifest_path(output))[1])
        return OutputState(wanted, set())
    # resume
    if existing is None:
        return OutputState(wanted, set())  # a run killed before its first part: nothing to compare with
    differences = existing.differences(wanted)
    if differences:
        raise UserError(f"--resume would mix rows made with other settings into OUTPUT '{output}' ("
                        + "; ".join(differences) + "); resume with the original settings (see "
                        "'pipeline show OUTPUT'), --overwrite, or choose another OUTPUT")
    retried = _drop_error_rows(output, existing, ours) if retry_errors else 0
    done = {image_identity(p) for part in ours.values() for p, e in zip(part.paths, part.errors)
            if not (retry_errors and e)}
    return OutputState(existing, done, retried)


def _drop_error_rows(output: str, manifest: RunManifest, ours: dict[str, PartContents]) -> int:
    """Rewrite each part holding error rows without them (new part first, then the old one goes)."""
    dropped = 0
    writer = PartWriter(output, manifest, rows_per_file=1 << 62, seconds_per_file=float("inf"))
    for part, contents in ours.items():
        if not any(contents.errors):
            continue
        fs, path = storage.filesystem(part)
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        keep = pc.is_null(table.column("error"))
        dropped += table.num_rows - pc.sum(keep).as_py()
        kept = table.filter(keep)
        if kept.num_rows:
            writer.add(kept)
            writer.flush()
        # A crash here leaves the kept rows twice; they are ok rows of the same paths, and the next
        # --retry-errors or resume sees them as done: no path is labeled twice, readers may see a repeat.
        fs.rm(path)
    return dropped


class PartWriter:
    """Buffers result rows and commits them as atomic Parquet part files tagged with the run id."""

    def __init__(self, output: str, manifest: RunManifest, rows_per_file: int, seconds_per_file: float,
                 before_commit=lambda: None):
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

    def add(self, table: pa.Table) -> None:
        self._check_weights(table)
        self._buffer.append(table.select(self.schema.names).cast(self.schema))
        self._rows += table.num_rows
        if self._rows >= self.rows_per_file or time.monotonic() - self._last_flush >= self.seconds_per_file:
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
        self._last_flush = time.monotonic()
        if not self._rows:
            return
        self.before_commit()
        if not self._manifest_written:
            write_manifest(self.output, self.manifest)  # always before the part that relies on it
            self._manifest_written = True
        table = pa.concat_tables(self._buffer)
        self._buffer, self._rows = [], 0
        table = table.replace_schema_metadata({PART_OWNER_KEY: self.manifest.run_id.encode()})
        sink = io.BytesIO()
        pq.write_table(table, sink)  # complete bytes in memory before anything is published
        name = f"part-{time.strftime('%Y%m%d-%H%M%S')}-{self.files_written:05d}-{uuid.uuid4().hex[:8]}.parquet"
        fs, root = storage.filesystem(self.output)
        final = storage.join(root, name)
        if storage.is_url(self.output):
            fs.pipe_file(final, sink.getvalue())  # one PUT: the object exists whole or not at all
        else:
            tmp = storage.join(root, TMP_PREFIX + name)
            with open(tmp, "wb") as f:
                f.write(sink.getvalue())
            os.replace(tmp, final)  # an atomic rename on one local filesystem
        self.files_written += 1

