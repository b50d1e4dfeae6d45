"""`pipeline show` on a million-row OUTPUT: column projection, one part at a time, vs the whole table in pandas.

    python benchmarks/show_big_output.py [--rows 1000000] [--parts 10]

Writes a synthetic OUTPUT (real Parquet in the job's schema: 60-character paths, top-5 lists, 1% error
rows), then times in fresh processes `pipeline show` and the pandas way (`pd.read_parquet` of every column,
then the same summary), and prints wall seconds and peak RSS for each.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.results import SCHEMA

PANDAS_WAY = r"""
import sys, pandas as pd
frame = pd.read_parquet(sys.argv[1])
ok = frame[frame["error"].isna()]
print(len(frame), ok["label"].value_counts().head(10).to_dict(), ok.nsmallest(10, "score")[["path"]].shape)
"""


def write_output(folder: Path, rows: int, parts: int) -> None:
    rng = np.random.default_rng(0)
    names = [f"class_{i:03d}" for i in range(1000)]
    per = rows // parts
    for part in range(parts):
        ids = rng.integers(0, 1000, (per, 5))
        scores = np.sort(rng.random((per, 5)).astype(np.float32), axis=1)[:, ::-1]
        failed = rng.random(per) < 0.01
        table = pa.table({
            "path": [f"s3://bucket/photos/2026/11/{part:02d}/img_{i:09d}_{'x' * 12}.jpg" for i in range(per)],
            "label": [None if f else names[i] for f, i in zip(failed, ids[:, 0])],
            "score": [None if f else float(s) for f, s in zip(failed, scores[:, 0])],
            "top_labels": [[] if f else [names[j] for j in row] for f, row in zip(failed, ids)],
            "top_scores": [[] if f else row.tolist() for f, row in zip(failed, scores)],
            "top_ids": [[] if f else row.tolist() for f, row in zip(failed, ids)],
            "model": ["efficientnet_lite0"] * per,
            "weights_digest": ["sha256:" + "0" * 64] * per,
            "error": ["truncated or corrupt image: broken data stream" if f else None for f in failed],
        }, schema=SCHEMA)
        pq.write_table(table, folder / f"part-{part:05d}.parquet")


def measure(command: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    if proc.returncode:
        raise SystemExit(proc.stderr.read().decode()[-2000:])
    return time.perf_counter() - start, peak / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--parts", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_output(Path(tmp), args.rows, args.parts)
        show = measure([sys.executable, "-m", "pipeline", "show", tmp])
        pandas = measure([sys.executable, "-c", PANDAS_WAY, tmp])
    print(f"{args.rows:,} rows in {args.parts} parts: pipeline show {show[0]:.1f} s, peak RSS {show[1]:.2f} GiB; "
          f"pandas read of the whole table {pandas[0]:.1f} s, peak RSS {pandas[1]:.2f} GiB "
          f"(memory {pandas[1] / show[1]:.1f}x)")


if __name__ == "__main__":
    main()
