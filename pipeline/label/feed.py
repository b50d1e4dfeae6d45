"""The decode stage of the labeling job: paths in, (size, size, 3) uint8 batches and error text out.

A Ray Data task around ``pipeline.fetch.fetch_and_decode`` (concurrent reads, each image decoded as its
bytes arrive, transient failures retried): permanent failures become error rows; what still fails after
the retries is flagged ``transient`` and the job never commits it as done, so ``--resume`` picks it up.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline import storage
from pipeline.fetch import DEFAULT_RETRIES, READS_IN_FLIGHT, fetch_and_decode
from pipeline.images import use_one_opencv_thread

WORKER_BASELINE_BYTES = 128 * 2**20  # a decode worker process before any image: Python, numpy, OpenCV, Arrow


def decode_task_memory(task_size: int, size: int) -> int:
    """Bytes one decode task holds at its peak: the worker itself, its pixels twice (array and
    Arrow block) and the encoded objects in flight (4 MiB each is a large photo)."""
    return WORKER_BASELINE_BYTES + 2 * task_size * size * size * 3 + READS_IN_FLIGHT * 4 * 2**20


def read_and_decode(batch: dict[str, np.ndarray], size: int, storage_options: dict[str, Any],
                    retries: int = DEFAULT_RETRIES, resize_mode: str = "squash") -> dict[str, np.ndarray]:
    """CPU task: fetch and decode every path of ``batch``; per-row ``error`` text and ``transient`` flag."""
    use_one_opencv_thread()
    storage.set_storage_options(storage_options)
    paths = [str(p) for p in batch["path"]]
    fetched = fetch_and_decode(paths, size, resize_mode, retries)
    # "" when fine: an all-None column would not survive Ray's conversions
    return {"path": np.array(paths, dtype=object), "image": fetched.images,
            "error": np.array(fetched.errors, dtype=object), "transient": fetched.transient}
