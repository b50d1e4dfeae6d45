"""`pipeline show`'s summary reads four columns one part at a time and agrees with pandas on the whole table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.results import SCHEMA, summarize


def _part(rng, start: int, rows: int) -> pa.Table:
    labels = rng.choice(["cat", "dog", "espresso", "rocket"], rows)
    scores = rng.random(rows).astype(np.float32)
    failed = rng.random(rows) < 0.1
    return pa.table({
        "path": [f"/photos/{start + i:05d}.jpg" for i in range(rows)],
        "label": [None if f else str(x) for f, x in zip(failed, labels)],
        "score": [None if f else float(x) for f, x in zip(failed, scores)],
        "top_labels": [[] if f else [str(x)] for f, x in zip(failed, labels)],
        "top_scores": [[] if f else [float(x)] for f, x in zip(failed, scores)],
        "top_ids": [[] if f else [0] for f in failed],
        "model": ["m"] * rows,
        "weights_digest": ["sha256:0"] * rows,
        "error": ["truncated or corrupt image: x" if f else None for f in failed],
    }, schema=SCHEMA)


def test_summary_streams_parts_and_matches_pandas(tmp_path):
    rng = np.random.default_rng(1)
    for i, rows in enumerate((400, 1, 250)):
        pq.write_table(_part(rng, i * 1000, rows), tmp_path / f"part-{i:05d}.parquet")
    frame = pd.read_parquet(tmp_path)
    for label, min_score in ((None, None), ("cat", None), (None, 0.5)):
        view = frame if label is None else frame[frame["label"] == label]
        if min_score is not None:
            view = view[view["score"].isna() | (view["score"] >= min_score)]
        ok, failed = view[view["error"].isna()], view[view["error"].notna()]
        summary = summarize(str(tmp_path), label=label, min_score=min_score, limit=7)
        assert (summary.rows, summary.errors) == (len(view), len(failed))
        assert summary.label_counts.to_dict() == ok["label"].value_counts().to_dict()
        assert list(summary.label_counts) == sorted(summary.label_counts, reverse=True)
        assert list(summary.lowest["path"]) == list(ok.nsmallest(7, "score")["path"])
        assert list(summary.error_rows["path"]) == list(failed["path"].head(7))

    shown = CliRunner().invoke(app, ["show", str(tmp_path), "--limit", "3"])
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith(f"{len(frame)} rows, {frame['error'].notna().sum()} errors")
