"""The labeling job's Parquet output: its schema, atomic part files, resume state, summaries.

OUTPUT is a folder of ``part-*.parquet`` files that ``pandas.read_parquet(OUTPUT)``
reads as one table. A part file appears whole or not at all (local files are
written under a dot-name and renamed; object stores publish an object only when
its upload completes), so a crash never leaves a half-file for readers or resume.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UserError

SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # the image's path/URL as listed
        ("label", pa.string()),  # top-1 class name, null on error
        ("score", pa.float32()),  # top-1 probability, null on error
        ("top_labels", pa.list_(pa.string())),  # k names, best first
        ("top_scores", pa.list_(pa.float32())),  # k probabilities
        ("top_ids", pa.list_(pa.int32())),  # k class indices
        ("model", pa.string()),  # model name or artifact location
        ("error", pa.string()),  # null when fine, else what went wrong
    ]
)
PART_PREFIX = "part-"
TMP_PREFIX = ".tmp-"


def _entries(output: str) -> list[str]:
    """Paths directly in ``output`` (an object-store prefix with no objects has none)."""
    fs, root = storage.filesystem(output)
    fs.invalidate_cache(root)
    try:
        return list(fs.ls(root, detail=False))
    except FileNotFoundError:
        return []


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def part_files(output: str) -> list[str]:
    """Full paths/URLs of the committed part files in ``output``, oldest first."""
    fs, _ = storage.filesystem(output)
    names = [p for p in _entries(output) if _name(p).startswith(PART_PREFIX) and p.endswith(".parquet")]
    return [storage.full_url(fs, p, output) for p in sorted(names)]


def other_files(output: str) -> list[str]:
    """Entries in ``output`` that are not ours (their presence makes OUTPUT 'not empty')."""
    return [p for p in _entries(output) if not _name(p).startswith((PART_PREFIX, TMP_PREFIX))]


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
    for stale in _entries(output):  # leftovers of a killed run
        if _name(stale).startswith(TMP_PREFIX):
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


def read_results(output: str) -> pd.DataFrame:
    """All rows of a labeling job's OUTPUT as one DataFrame (same as ``pandas.read_parquet``)."""
    parts = part_files(output)
    if not parts:
        raise UserError(f"'{output}' holds no results (no {PART_PREFIX}*.parquet files)")
    tables = []
    for part in parts:
        fs, path = storage.filesystem(part)
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables).to_pandas()


@dataclass
class ResultSummary:
    rows: int
    errors: int
    label_counts: pd.Series  # label -> count, most common first
    lowest: pd.DataFrame  # the least confident labeled rows
    error_rows: pd.DataFrame  # path and error of failed rows


def summarize(frame: pd.DataFrame, label: str | None = None, min_score: float | None = None,
              limit: int = 10) -> ResultSummary:
    """What a person wants first: label counts, the least confident rows, the errors."""
    if label is not None:
        frame = frame[frame["label"] == label]
    if min_score is not None:
        frame = frame[frame["score"].isna() | (frame["score"] >= min_score)]
    ok = frame[frame["error"].isna()]
    failed = frame[frame["error"].notna()]
    return ResultSummary(
        rows=len(frame),
        errors=len(failed),
        label_counts=ok["label"].value_counts(),
        lowest=ok.nsmallest(limit, "score")[["path", "label", "score"]],
        error_rows=failed[["path", "error"]].head(limit),
    )
