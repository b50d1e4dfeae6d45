"""Why the labeling job feeds Ray Data in waves of blocks and not through one streaming read source.

    python benchmarks/streaming_sources.py [--read-tasks 4096,65536] [--trickle 3]

Two ways a custom ``ray.data.Datasource`` could stream paths that are still being listed, measured on a
local Ray (2 CPUs), against what the job does (``ray.data.from_blocks`` of a wave of path blocks):

1. One long-lived read task that yields a block of 256 paths every ``--trickle`` seconds (a listing still
   going on). Printed: when each block reaches the consumer. Ray Data's read operator buffers a read task's
   output blocks until they reach ``target_max_block_size`` (128 MiB) or the task ends, so nothing arrives
   before the last yield.
2. One read task per block of 256 paths: seconds to the first block and the driver's extra memory, for each
   ``--read-tasks`` count. Ray Data creates and puts every read task when the execution starts.
3. The job's way: ``from_blocks`` of the same number of 256-path blocks.
"""

from __future__ import annotations

import argparse
import functools
import time

import psutil
import pyarrow as pa

BLOCK = 256


def trickled_blocks(blocks: int, trickle: float):
    for i in range(blocks):
        if i:
            time.sleep(trickle)
        yield pa.table({"path": pa.array([f"s3://bucket/p{i}-{j}.jpg" for j in range(BLOCK)])})


def one_block(i: int):
    return [pa.table({"path": pa.array([f"s3://bucket/p{i}-{j}.jpg" for j in range(BLOCK)])})]


def source(read_fns):
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class Paths(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            metadata = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            return [ReadTask(fn, metadata) for fn in read_fns]

    return Paths()


def first_blocks(dataset, wanted: int) -> tuple[float, float, float]:
    """(seconds to the first block, seconds to ``wanted`` blocks, driver RSS growth in MiB)."""
    process = psutil.Process()
    before = process.memory_info().rss
    start = time.perf_counter()
    first = None
    grown = 0.0
    for count, _ in enumerate(dataset.iter_batches(batch_size=None, batch_format="pyarrow"), 1):
        if first is None:
            first = time.perf_counter() - start
            grown = (process.memory_info().rss - before) / 2**20
        if count == wanted:
            break
    return first or 0.0, time.perf_counter() - start, grown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--read-tasks", default="4096,65536")
    parser.add_argument("--trickle", type=float, default=3.0)
    args = parser.parse_args()

    import ray
    from ray.data import DataContext

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    DataContext.get_current().enable_progress_bars = False
    DataContext.get_current().print_on_execution_start = False

    start = time.perf_counter()
    dataset = ray.data.read_datasource(source([functools.partial(trickled_blocks, 3, args.trickle)]),
                                      override_num_blocks=1, num_cpus=0)
    arrivals = [f"{time.perf_counter() - start:.1f} s ({table.num_rows} rows)"
                for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow")]
    print(f"1. one read task yielding 3 blocks {args.trickle:g} s apart: reached the consumer at "
          f"{', '.join(arrivals)}", flush=True)

    for count in (int(n) for n in args.read_tasks.split(",")):
        fns = [functools.partial(one_block, i) for i in range(count)]
        dataset = ray.data.read_datasource(source(fns), override_num_blocks=count, num_cpus=0, concurrency=4)
        first, hundred, grown = first_blocks(dataset, 100)
        blocks = [one_block(i)[0] for i in range(count)]
        reference = first_blocks(ray.data.from_blocks(blocks), 100)
        print(f"2. {count:,} read tasks of {BLOCK} paths ({count * BLOCK:,} paths): first block after {first:.2f} s, "
              f"100 after {hundred:.2f} s, driver +{grown:.0f} MiB; 3. from_blocks of the same: first block after "
              f"{reference[0]:.2f} s, 100 after {reference[1]:.2f} s", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
