"""How long the driver takes to hand a big job to Ray Data, before the first decode task can start.

    python benchmarks/plan_cost.py --paths 1000000 [--repeat 2]

Builds the labeling job's dataset (`pipeline.label.job.label_dataset`, no image read) for N synthetic
bucket paths on a local Ray, and, as the reference, the same input blocks through `ray.data.from_arrow`,
which runs one Ray task per block to read its metadata back.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--paths", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import ray

    from pipeline.label.config import LabelConfig
    from pipeline.label.job import label_dataset, path_blocks
    from pipeline.models.resolved import resolve_model
    from pipeline.ray_session import ray_session

    paths = [f"s3://bucket/photos/dir{i % 100}/image-{i:08d}.jpg" for i in range(args.paths)]
    config = LabelConfig(source="s3://bucket/photos", output="/tmp/unused", weights="none", progress=False)
    blocks = path_blocks(paths, config.task_size)
    with ray_session(None):
        for round_ in range(args.repeat):
            start = time.perf_counter()
            label_dataset(config, paths, resolve_model(config.model))
            ours = time.perf_counter() - start
            start = time.perf_counter()
            ray.data.from_arrow(blocks)
            reference = time.perf_counter() - start
            print(f"round {round_ + 1}: {len(paths):,} paths in {len(blocks):,} blocks: label_dataset {ours:.2f} s; "
                  f"the same blocks through ray.data.from_arrow {reference:.2f} s ({reference / ours:.1f}x)", flush=True)


if __name__ == "__main__":
    main()
