"""Reading a labeling job's Parquet output: its schema, its part files, summaries.

OUTPUT is a folder of ``part-*.parquet`` files that ``pandas.read_parquet(OUTPUT)``
reads as one table; ``pipeline.label.output`` writes them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.errors import UserError
from pipeline.parquet_files import read_parquet
from pipeline.storage_retry import DEFAULT_RETRIES, with_retries

SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # the image's path/URL as listed
        ("label", pa.string()),  # top-1 class name, null on error
        ("score", pa.float32()),  # top-1 probability, null on error
        ("top_labels", pa.list_(pa.string())),  # k names, best first
        ("top_scores", pa.list_(pa.float32())),  # k probabilities
        ("top_ids", pa.list_(pa.int32())),  # k class indices
        ("model", pa.string()),  # model name or artifact location
        ("weights_digest", pa.string()),  # sha256 of the weights the predictor actually loaded
        ("error", pa.string()),  # null when fine, else what went wrong
    ]
)
# --embeddings adds this column: the pooled penultimate features, float16 (half the bytes of float32;
# cosine similarities move by under 1e-4, see README), null on error rows. Without it, SCHEMA as is.
EMBEDDING_FIELD = pa.field("embedding", pa.list_(pa.float16()))


def result_schema(embeddings: bool = False) -> pa.Schema:
    """The schema of OUTPUT's part files: SCHEMA, plus the ``embedding`` column with ``--embeddings``."""
    return SCHEMA.append(EMBEDDING_FIELD) if embeddings else SCHEMA


PART_PREFIX = "part-"
TMP_PREFIX = ".tmp-"
# Our own files beside the parts; the leading underscore keeps pandas/pyarrow from reading them as data.
MANIFEST_NAME = "_pipeline_manifest.json"
LEASE_NAME = "_pipeline_lease.json"
LISTING_NAME = "_pipeline_listing"  # the run's recorded listing (pipeline.label.listing_record)
OWN_PREFIX = "_pipeline_"  # the manifest, the lease and the lease's own short-lived files
# Parquet key-value metadata that marks a part file as written by this tool (value: the manifest's run id).
PART_OWNER_KEY = b"pipeline.label.run"


def output_entries(output: str, retries: int = DEFAULT_RETRIES) -> list[str]:
    """Paths directly in ``output`` (an object-store prefix with no objects has none)."""
    fs, root = storage.filesystem(output)

    def ls() -> list[str]:
        fs.invalidate_cache(root)
        try:
            return list(fs.ls(root, detail=False))
        except FileNotFoundError:
            return []

    return with_retries("list", output, ls, retries)


def entry_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def part_files(output: str, retries: int = DEFAULT_RETRIES) -> list[str]:
    """Full paths/URLs of the committed part files in ``output``, oldest first."""
    fs, _ = storage.filesystem(output)
    names = [p for p in output_entries(output, retries)
             if entry_name(p).startswith(PART_PREFIX) and p.endswith(".parquet")]
    return [storage.full_url(fs, p, output) for p in sorted(names)]


def other_files(output: str, retries: int = DEFAULT_RETRIES) -> list[str]:
    """Entries in ``output`` that are not named like ours (their presence makes OUTPUT 'not empty')."""
    return [p for p in output_entries(output, retries)
            if not entry_name(p).startswith((PART_PREFIX, TMP_PREFIX, OWN_PREFIX))]


def part_tables(output: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Each part file of ``output`` as a table (only ``columns``, if given); UserError naming a damaged one."""
    parts = part_files(output)
    if not parts:
        if not storage.exists(output):
            raise UserError(f"'{output}' does not exist; give the OUTPUT of a 'pipeline label' run")
        raise UserError(f"'{output}' holds no results (no {PART_PREFIX}*.parquet files)")
    for part in parts:
        fs, path = storage.filesystem(part)
        try:
            with fs.open(path, "rb") as f:
                table = read_parquet(f, columns=columns)
        except (pa.ArrowException, OSError) as err:
            raise UserError(f"part file '{part}' cannot be read ({type(err).__name__}: {err}); "
                            "it is damaged or was not written by 'pipeline label'") from err
        yield table


def read_results(output: str, columns: list[str] | None = None) -> pd.DataFrame:
    """All rows of a labeling job's OUTPUT as one DataFrame (same as ``pandas.read_parquet``)."""
    tables = list(part_tables(output, columns))
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


@dataclass
class ResultSummary:
    rows: int
    errors: int
    label_counts: pd.Series  # label -> count, most common first
    lowest: pd.DataFrame  # the least confident labeled rows
    error_rows: pd.DataFrame  # path and error of failed rows


SUMMARY_COLUMNS = ["path", "label", "score", "error"]  # never the top-k lists: most of a part's bytes


def summarize(output: str, label: str | None = None, min_score: float | None = None,
              limit: int = 10) -> ResultSummary:
    """What a person wants first: label counts, the least confident rows, the errors.

    Reads four columns, one part file at a time, and keeps only counts and ``limit`` rows per
    section, so a summary of millions of rows needs the memory of one part, not of the table.
    """
    counts: Counter[str] = Counter()
    rows = errors = 0
    lowest: pa.Table | None = None
    error_rows: list[dict] = []
    for table in part_tables(output, SUMMARY_COLUMNS):
        if label is not None:
            table = table.filter(pc.equal(table["label"], label))
        if min_score is not None:
            table = table.filter(pc.or_kleene(pc.is_null(table["score"]), pc.greater_equal(table["score"], min_score)))
        failed_mask = pc.is_valid(table["error"])
        ok, failed = table.filter(pc.invert(failed_mask)), table.filter(failed_mask)
        rows += table.num_rows
        errors += failed.num_rows
        error_rows += failed.slice(0, max(0, limit - len(error_rows))).select(["path", "error"]).to_pylist()
        for item in pc.value_counts(ok["label"]).to_pylist():
            counts[item["values"]] += item["counts"]
        candidates = ok.select(["path", "label", "score"]) if lowest is None else pa.concat_tables(
            [lowest, ok.select(["path", "label", "score"])])
        if candidates.num_rows:
            keep = pc.select_k_unstable(candidates, k=min(limit, candidates.num_rows),
                                        sort_keys=[("score", "ascending")])
            lowest = candidates.take(keep)
    lowest_frame = (lowest.to_pandas().sort_values("score", kind="stable").reset_index(drop=True)
                    if lowest is not None else pd.DataFrame(columns=["path", "label", "score"]))
    return ResultSummary(
        rows=rows,
        errors=errors,
        label_counts=pd.Series(dict(counts.most_common()), dtype="int64", name="count"),
        lowest=lowest_frame,
        error_rows=pd.DataFrame(error_rows, columns=["path", "error"]),
    )
