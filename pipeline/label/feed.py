"""The decode stage of the labeling job: paths in, (size, size, 3) uint8 batches and error text out.

Each task fetches its batch's objects concurrently (a bounded thread pool; s3fs and
gcsfs run every request on their own event loop, so threads only wait) and decodes
each image as soon as its bytes arrive, so network waits overlap with decoding and
a 25 ms object-store round trip costs a batch one round trip, not one per image.

Failures are of two kinds. Permanent ones (a decode failure, a missing object)
become error rows. Everything else a read can raise (throttling, 5xx, timeouts,
connection resets, expired credentials) is retried with backoff; what still fails
is marked ``transient`` and the job never commits it as done, so ``--resume``
picks it up.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.images import decode_or_error

READS_IN_FLIGHT = 16  # concurrent object reads per decode task
FIRST_RETRY_DELAY = 0.5  # seconds before the first re-read of transient failures; doubles each round
PERMANENT_READ_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


WORKER_BASELINE_BYTES = 128 * 2**20  # a decode worker process before any image: Python, numpy, OpenCV, Arrow


def decode_task_memory(task_size: int, size: int) -> int:
    """Bytes one decode task holds at its peak: the worker itself, its pixels twice (array and
    Arrow block) and the encoded objects in flight (4 MiB each is a large photo)."""
    return WORKER_BASELINE_BYTES + 2 * task_size * size * size * 3 + READS_IN_FLIGHT * 4 * 2**20


def read_and_decode(batch: dict[str, np.ndarray], size: int, storage_options: dict[str, Any],
                    retries: int = 5, resize_mode: str = "squash") -> dict[str, np.ndarray]:
    """CPU task: fetch and decode every path of ``batch``; per-row ``error`` text and ``transient`` flag.

    Reads that fail for a reason that may pass get ``retries`` more rounds, 0.5 s, 1 s, 2 s, ...
    apart (on top of the storage client's own retries): 5 rounds wait out about 15 s of outage.
    """
    storage.set_storage_options(storage_options)
    paths = [str(p) for p in batch["path"]]
    images = np.zeros((len(paths), size, size, 3), np.uint8)
    errors = [""] * len(paths)  # "" when fine: an all-None column would not survive Ray's conversions
    transient = np.zeros(len(paths), dtype=bool)
    pending = list(range(len(paths)))
    with ThreadPoolExecutor(min(READS_IN_FLIGHT, max(1, len(paths)))) as pool:
        for delay in [0.0] + [FIRST_RETRY_DELAY * 2**r for r in range(retries)]:
            if not pending:
                break
            time.sleep(delay)
            pending = _fetch_and_decode(pool, paths, pending, size, resize_mode, images, errors)
    for i in pending:
        transient[i] = True
    return {"path": np.array(paths, dtype=object), "image": images, "error": np.array(errors, dtype=object),
            "transient": transient}


def _fetch_and_decode(pool: ThreadPoolExecutor, paths: list[str], indices: list[int], size: int,
                      resize_mode: str, images: np.ndarray, errors: list[str]) -> list[int]:
    """One round over ``indices``; fills ``images``/``errors`` and returns the indices worth another try."""
    retry: list[int] = []
    futures = {pool.submit(storage.read_bytes, paths[i]): i for i in indices}
    for future in as_completed(futures):
        i = futures[future]
        try:
            data = future.result()
        except PERMANENT_READ_ERRORS:
            errors[i] = "not found: the file disappeared or cannot be seen from this node"
            continue
        except Exception as err:  # noqa: BLE001 - throttling, 5xx, timeouts, resets: may pass
            errors[i] = f"unreadable after retries: {type(err).__name__}: {err}"
            retry.append(i)
            continue
        result = decode_or_error(data, (size, size), resize_mode=resize_mode)
        errors[i] = result.error or ""
        if result.image is not None:
            images[i] = result.image
    return sorted(retry)
