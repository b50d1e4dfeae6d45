"""What grows with the number of images: the driver's memory, the time to the first committed rows, --dry-run.

    python benchmarks/listing_scale.py [--sizes 1000000,10000000] [--committed-share 0.5] [--wait-rows 200000]

For each size N, a list file of N paths that do not exist, so every row is an error row and no forward
pass runs: what is measured is what the driver does per image (listing, done-set, feeding Ray Data,
committing), not the model. Three runs of the real CLI in fresh processes, per size:

1. ``pipeline label LIST OUT``: seconds to the first committed part file, the driver's peak RSS, and the
   rows/s of its error rows, stopped (SIGINT) once ``--wait-rows`` rows are committed.
2. ``--resume`` over an OUTPUT holding ``committed-share * N`` committed rows: seconds to its first new
   part file and peak RSS. The committed rows are written with the job's own PartWriter under a manifest
   made by a real run (they are the error rows a run would commit for those paths), so building OUTPUT
   takes seconds rather than the hours of labeling N paths.
3. ``--dry-run`` of the same list file against an OUTPUT holding N committed rows: seconds and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).parent
MODEL = ["--model", "efficientnet_lite0", "--batch-size", "32"]


def write_list(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for start in range(0, n, 100_000):
            f.write("".join(f"/nonexistent/camera-{i % 97:03d}/day-{i % 28:02d}/IMG_{i:09d}.jpg\n"
                            for i in range(start, min(n, start + 100_000))))


def parts(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet")) if out.exists() else []


def committed_rows(out: Path, known: dict[Path, int]) -> int:
    import pyarrow.parquet as pq

    for part in parts(out):
        if part not in known:
            try:
                known[part] = pq.ParquetFile(part).metadata.num_rows
            except Exception:  # noqa: BLE001 - being renamed into place
                continue
    return sum(known.values())


class Run:
    """One CLI run in a fresh process, with its driver's peak RSS sampled every 0.1 s."""

    def __init__(self, *args: str):
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "label", *args], cwd=HERE.parent,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.peak = 0
        self.output: list[str] = []
        threading.Thread(target=self._sample, daemon=True).start()
        threading.Thread(target=lambda: self.output.extend(self.proc.stdout), daemon=True).start()

    def _sample(self) -> None:
        process = psutil.Process(self.proc.pid)
        while self.proc.poll() is None:
            try:
                self.peak = max(self.peak, process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.1)

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def first_rows(out: Path, run: Run, before: int, wait_rows: int, timeout: float = 1800) -> tuple[float, float, int]:
    """(seconds to the first new part, rows/s from then until ``wait_rows`` more rows, rows committed)."""
    known = {p: 0 for p in parts(out)}  # parts there before the run do not count
    first = None
    first_count = 0
    while run.seconds() < timeout:
        count = committed_rows(out, known)
        if count and first is None:
            first, first_count = run.seconds(), count
        if count >= wait_rows or run.proc.poll() is not None:
            break
        time.sleep(0.2)
    count = committed_rows(out, known)
    elapsed = run.seconds() - (first or 0)
    rate = (count - first_count) / elapsed if first is not None and elapsed > 0 else 0.0
    if first is None:
        raise SystemExit("no rows committed:\n" + "".join(run.output[-30:]))
    return first, rate, count


def seed_output(out: Path, listing: Path, rows: int, work: Path) -> None:
    """OUTPUT with a real run's manifest and ``rows`` committed error rows for the first ``rows`` paths."""
    small = work / "small.txt"
    with open(listing) as src, open(small, "w") as dst:
        for _, line in zip(range(256), src):
            dst.write(line)
    subprocess.run([sys.executable, "-m", "pipeline", "label", str(small), str(out), *MODEL],
                   cwd=HERE.parent, check=True, capture_output=True)
    import pyarrow as pa

    from pipeline.label.manifest import read_manifest
    from pipeline.label.output import PartWriter
    from pipeline.results import result_schema

    import pyarrow.csv as csv

    manifest = read_manifest(str(out))
    writer = PartWriter(str(out), manifest, rows_per_file=10_000, seconds_per_file=float("inf"))
    schema = result_schema(manifest.embeddings)
    paths = csv.read_csv(listing, read_options=csv.ReadOptions(column_names=["path"]),
                         parse_options=csv.ParseOptions(delimiter="\x1f", quote_char=False)).column("path")
    paths = paths.slice(256, rows - 256).combine_chunks()
    for start in range(0, len(paths), 10_000):
        batch = paths.slice(start, 10_000)
        n = len(batch)
        columns = {name: pa.nulls(n, schema.field(name).type) for name in schema.names}
        columns["path"] = batch
        columns["model"] = pa.array([manifest.model] * n, pa.string())
        columns["weights_digest"] = pa.array([manifest.weights_digest] * n, pa.string())
        columns["error"] = pa.array(["not found: no such file or object"] * n, pa.string())
        writer.add(pa.table(columns, schema=schema))
    writer.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--committed-share", type=float, default=0.5)
    parser.add_argument("--wait-rows", type=int, default=200_000, help="rows to commit before stopping a run")
    parser.add_argument("--skip-first", action="store_true", help="skip the first run (1.)")
    parser.add_argument("--first-only", action="store_true", help="only the first run (e.g. in a checkout of an "
                        "older version, for a baseline)")
    args = parser.parse_args()
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n in [int(s) for s in args.sizes.split(",")]:
            listing = work / f"list-{n}.txt"
            write_list(listing, n)
            # 1. a first run
            if not args.skip_first:
                out = work / f"first-{n}"
                run = Run(str(listing), str(out), *MODEL)
                first, rate, count = first_rows(out, run, 0, args.wait_rows)
                run.stop()
                rows_out.append((n, "first run", first, run.peak, rate))
                print(f"{n:>11,} first run: first rows after {first:.1f} s, driver peak {run.peak / 2**30:.2f} GiB, "
                      f"{rate:,.0f} rows/s ({count:,} committed)", flush=True)
            if args.first_only:
                continue
            # 2. a resume over committed_share * N committed rows
            out = work / f"resume-{n}"
            committed = int(n * args.committed_share)
            seed_output(out, listing, committed, work)
            run = Run(str(listing), str(out), *MODEL, "--resume")
            first, rate, count = first_rows(out, run, committed, args.wait_rows)
            run.stop()
            rows_out.append((n, f"resume over {committed:,}", first, run.peak, rate))
            print(f"{n:>11,} resume over {committed:,} committed: first new rows after {first:.1f} s, driver peak "
                  f"{run.peak / 2**30:.2f} GiB, {rate:,.0f} rows/s", flush=True)
            # 3. a dry run against N committed rows
            out = work / f"dry-{n}"
            seed_output(out, listing, n, work)
            run = Run(str(listing), str(out), *MODEL, "--dry-run", "--resume")
            run.proc.wait()
            seconds = run.seconds()
            time.sleep(0.3)
            print(f"{n:>11,} dry run against {n:,} committed: {seconds:.1f} s, driver peak "
                  f"{run.peak / 2**30:.2f} GiB: {''.join(run.output).strip().splitlines()[-1]}", flush=True)
            for folder in ("first", "resume", "dry"):
                subprocess.run(["rm", "-rf", str(work / f"{folder}-{n}")])
            listing.unlink()
    if len(rows_out) >= 4:
        small, large = rows_out[0], rows_out[-2]
        print(f"first-run driver peak {large[0]:,} vs {small[0]:,}: {large[3] / small[3]:.2f}x")


if __name__ == "__main__":
    main()
