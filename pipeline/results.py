"""Reading a labeling job's Parquet output: its schema, its part files, summaries.

OUTPUT is a folder of ``part-*.parquet`` files that ``pandas.read_parquet(OUTPUT)``
reads as one table; ``pipeline.label.output`` writes them.
"""

from __future__ import annotations

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
        ("weights_digest", pa.string()),  # sha256 of the weights the predictor actually loaded
        ("error", pa.string()),  # null when fine, else what went wrong
    ]
)
PART_PREFIX = "part-"
TMP_PREFIX = ".tmp-"
# Our own files beside the parts; the leading underscore keeps pandas/pyarrow from reading them as data.
MANIFEST_NAME = "_pipeline_manifest.json"
LEASE_NAME = "_pipeline_lease.json"
OWN_PREFIX = "_pipeline_"  # the manifest, the lease and the lease's own short-lived files
# Parquet key-value metadata that marks a part file as written by this tool (value: the manifest's run id).
PART_OWNER_KEY = b"pipeline.label.run"


def output_entries(output: str) -> list[str]:
    """Paths directly in ``output`` (an object-store prefix with no objects has none)."""
    fs, root = storage.filesystem(output)
    fs.invalidate_cache(root)
    try:
        return list(fs.ls(root, detail=False))
    except FileNotFoundError:
        return []


def entry_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def part_files(output: str) -> list[str]:
    """Full paths/URLs of the committed part files in ``output``, oldest first."""
    fs, _ = storage.filesystem(output)
    names = [p for p in output_entries(output)
             if entry_name(p).startswith(PART_PREFIX) and p.endswith(".parquet")]
    return [storage.full_url(fs, p, output) for p in sorted(names)]


def other_files(output: str) -> list[str]:
    """Entries in ``output`` that are not named like ours (their presence makes OUTPUT 'not empty')."""
    return [p for p in output_entries(output)
            if not entry_name(p).startswith((PART_PREFIX, TMP_PREFIX, OWN_PREFIX))]


def read_results(output: str) -> pd.DataFrame:
    """All rows of a labeling job's OUTPUT as one DataFrame (same as ``pandas.read_parquet``)."""
    parts = part_files(output)
    if not parts:
        raise UserError(f"'{output}' holds no results (no {PART_PREFIX}*.parquet files)")
    tables = []
    for part in parts:
        fs, path = storage.filesystem(part)
        try:
            with fs.open(path, "rb") as f:
                tables.append(pq.read_table(f))
        except (pa.ArrowException, OSError) as err:
            raise UserError(f"part file '{part}' cannot be read ({type(err).__name__}: {err}); "
                            "it is damaged or was not written by 'pipeline label'") from err
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


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
