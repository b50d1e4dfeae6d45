"""Fetch images and decode them: the one read+decode path of labeling, fine-tuning and ``classify``.

A batch's objects are fetched concurrently (a bounded thread pool; s3fs and gcsfs run every request on
their own event loop, so the threads only wait) and each image is decoded as soon as its bytes arrive,
so network waits overlap with decoding and a 25 ms object-store round trip costs a batch one round
trip, not one per image.

Failures are of two kinds. Permanent ones (a decode failure, a missing object, a local file this user
may not read, a malformed URL) are an error text for that image. Everything else a read can raise
(throttling, 5xx, timeouts, connection resets, expired credentials) is retried with backoff; what still
fails is marked ``transient``: the caller must not treat it as a property of the image (labeling leaves
it for ``--resume``, fine-tuning stops).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline import storage
from pipeline.images import decode_or_error
from pipeline.storage_retry import is_throttled

READS_IN_FLIGHT = 16  # concurrent object reads per batch
FIRST_RETRY_DELAY = 0.5  # seconds before the first re-read of transient failures; doubles each round
DEFAULT_RETRIES = 5  # rounds of re-reading after a transient failure: about 15 s of outage waited out
PERMANENT_READ_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
# A malformed or unknown URL (fsspec's "Protocol not known") and a missing filesystem package: no retry helps.
CONFIGURATION_ERRORS = (ValueError, ImportError)
NOT_FOUND = "not found: no such file or object (deleted, moved, or not visible from this machine)"


@dataclass
class Fetched:
    images: np.ndarray  # (n, size, size, 3) uint8; zeros where there is an error
    errors: list[str]  # per image: "" when decoded, else what went wrong
    transient: np.ndarray  # (n,) bool: the read failed after retries for a reason that may pass


def fetch_and_decode(items: Sequence[str | bytes], size: int, resize_mode: str = "squash",
                     retries: int = DEFAULT_RETRIES) -> Fetched:
    """Read (paths/URLs) or take (bytes) every item and decode it to ``size`` x ``size`` RGB.

    Reads that fail for a reason that may pass get ``retries`` more rounds, 0.5 s, 1 s, 2 s, ... apart
    (on top of the storage client's own retries).
    """
    images = np.zeros((len(items), size, size, 3), np.uint8)
    errors = [""] * len(items)
    transient = np.zeros(len(items), dtype=bool)
    pending = []
    for i, item in enumerate(items):
        if isinstance(item, (bytes, bytearray, memoryview)):
            _decode_into(bytes(item), i, size, resize_mode, images, errors)
        else:
            pending.append(i)
    if pending:
        in_flight = min(READS_IN_FLIGHT, len(pending))
        with ThreadPoolExecutor(in_flight) as pool:
            for delay in [0.0] + [FIRST_RETRY_DELAY * 2**r for r in range(retries)]:
                if not pending:
                    break
                time.sleep(delay)
                pending, throttled = _fetch_round(pool, items, pending, size, resize_mode, images, errors, in_flight)
                if throttled:  # the store said SlowDown: the next round sends half as many at once
                    in_flight = max(1, in_flight // 2)
    transient[pending] = True
    return Fetched(images, errors, transient)


def _decode_into(data: bytes, i: int, size: int, resize_mode: str, images: np.ndarray, errors: list[str]) -> None:
    result = decode_or_error(data, (size, size), resize_mode=resize_mode)
    errors[i] = result.error or ""
    if result.image is not None:
        images[i] = result.image


def _fetch_round(pool: ThreadPoolExecutor, items: Sequence[str | bytes], indices: list[int], size: int,
                 resize_mode: str, images: np.ndarray, errors: list[str], in_flight: int) -> tuple[list[int], bool]:
    """One round over ``indices`` with at most ``in_flight`` reads at once; fills ``images``/``errors`` and
    returns the indices worth another try, and whether the store asked to slow down."""
    retry: list[int] = []
    throttled = False
    gate = threading.BoundedSemaphore(in_flight)

    def read(path: str) -> bytes:
        with gate:
            return storage.read_bytes(path)

    futures = {pool.submit(read, str(items[i])): i for i in indices}
    for future in as_completed(futures):
        i = futures[future]
        try:
            data = future.result()
        except PERMANENT_READ_ERRORS:
            errors[i] = NOT_FOUND
            continue
        except CONFIGURATION_ERRORS as err:
            errors[i] = f"unreadable: {type(err).__name__}: {err}"
            continue
        except PermissionError as err:
            if storage.is_url(str(items[i])):  # object stores say AccessDenied for expired credentials too
                errors[i] = f"unreadable after retries: {type(err).__name__}: {err}"
                retry.append(i)
            else:  # a local file's permissions do not change by waiting
                errors[i] = f"unreadable: {type(err).__name__}: {err}"
            continue
        except Exception as err:  # noqa: BLE001 - throttling, 5xx, timeouts, resets: may pass
            errors[i] = f"unreadable after retries: {type(err).__name__}: {err}"
            retry.append(i)
            throttled = throttled or is_throttled(err)
            continue
        _decode_into(data, i, size, resize_mode, images, errors)
    return sorted(retry), throttled
