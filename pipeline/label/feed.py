"""The decode stage of the labeling job: paths in, (size, size, 3) uint8 batches and error text out."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline import storage
from pipeline.images import decode_or_error


def read_and_decode(batch: dict[str, np.ndarray], size: int, storage_options: dict[str, Any]) -> dict[str, np.ndarray]:
    """CPU task: read each path's bytes and decode to (size, size, 3) uint8; failures become error text."""
    storage.set_storage_options(storage_options)
    paths = [str(p) for p in batch["path"]]
    images = np.zeros((len(paths), size, size, 3), np.uint8)
    errors: list[str] = []  # "" when fine: an all-None column would not survive Ray's conversions
    for i, path in enumerate(paths):
        try:
            data, error = storage.read_bytes(path), None
        except FileNotFoundError:
            data, error = None, "not found: the file disappeared or cannot be seen from this node"
        except Exception as err:  # noqa: BLE001 - one unreadable file must not fail the batch
            data, error = None, f"unreadable: {type(err).__name__}: {err}"
        if error is None:
            result = decode_or_error(data, (size, size))
            error = result.error
            if result.image is not None:
                images[i] = result.image
        errors.append(error or "")
    return {"path": np.array(paths, dtype=object), "image": images, "error": np.array(errors, dtype=object)}
