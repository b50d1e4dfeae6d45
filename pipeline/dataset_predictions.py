"""``pipeline.predict``: the labeling job's decode tasks and predictor actors on a Ray Dataset the user has.

A Ray Data user reads and writes their own data (``read_parquet`` of a catalogue, ``read_images``,
``read_binary_files``, a join with their metadata); ``predict_dataset`` adds OUTPUT's prediction columns
to every row and keeps the rows' own columns as they are. The images are the first of these columns the
rows have: ``image`` (decoded pixels of any size: uint8, gray, RGB or RGBA), ``bytes`` (encoded files) or
``path`` (paths or URLs, read as the labeling job reads them). Decoding runs in CPU tasks and the model
in an actor pool, as in ``pipeline label``. Nothing is written and nothing is resumed: a row whose image
cannot be had gets ``error`` (a read that still fails after the retries too) and no prediction.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.label.config import LabelConfig
from pipeline.label.predictor import Predictor
from pipeline.results import result_schema

IMAGE_COLUMNS = ("image", "bytes", "path")  # where a row's image comes from, first found first
PIXELS = "__pipeline_pixels"  # the decoded model input, between the two stages
DECODE_ERROR = "__pipeline_decode_error"


def predict_dataset(dataset: Any, config: LabelConfig) -> Any:
    """``dataset`` (a ray.data.Dataset) with the prediction columns added; lazy, as Datasets are."""
    import ray

    from pipeline.label.job import (auto_concurrency, decode_arguments, decode_stage, predictor_arguments,
                                    predictor_stage)
    from pipeline.models.resolved import resolve_model

    model = resolve_model(config.model, config.weights, config.model_settings)
    if config.embeddings:
        model.require_features()
    schema = dataset.schema(fetch_if_missing=False)  # known without running anything, or None
    if schema is not None:
        check_columns(list(schema.names), config.embeddings)
    if not ray.is_initialized():  # what the Dataset would do when consumed; the actor pool is sized now
        ray.init()
    low, high = config.concurrency or auto_concurrency(config, ray.cluster_resources(), sys.maxsize)
    decoded = dataset.map_batches(decode_rows, fn_kwargs={**decode_arguments(config, model),
                                                          "embeddings": config.embeddings},
                                  batch_format="pyarrow", **decode_stage(config, model))
    return decoded.map_batches(DatasetPredictor, fn_constructor_kwargs=predictor_arguments(config, model),
                               batch_format="pyarrow", **predictor_stage(config, low, high))


def check_columns(names: list[str], embeddings: bool) -> None:
    """ValueError when the rows have no image column, or already have a column predict would add."""
    if not any(name in names for name in IMAGE_COLUMNS):
        raise ValueError(f"pipeline.predict needs an 'image', 'bytes' or 'path' column; the rows have "
                         f"{', '.join(names) or 'no columns'}")
    taken = [name for name in result_schema(embeddings).names if name != "path" and name in names]
    if taken:
        raise ValueError(f"the rows already have {', '.join(repr(n) for n in taken)}, which pipeline.predict "
                         f"adds: rename them first, e.g. dataset.rename_columns({{{taken[0]!r}: "
                         f"'{taken[0]}_given'}})")


def decode_rows(table: pa.Table, size: int, storage_options: dict[str, Any], retries: int, resize_mode: str,
                embeddings: bool = False) -> pa.Table:
    """CPU task: the rows as they came, plus each one's model input and decode error."""
    from ray.data.extensions import ArrowTensorArray

    from pipeline import storage
    from pipeline.fetch import fetch_and_decode
    from pipeline.images import use_one_opencv_thread

    use_one_opencv_thread()
    check_columns(table.column_names, embeddings)
    source = next(name for name in IMAGE_COLUMNS if name in table.column_names)
    if source == "image":
        images, errors = fit_pixels(table.column("image"), size, resize_mode)
    else:
        storage.set_storage_options(storage_options)
        items = table.column(source).to_pylist()
        present = [i for i, item in enumerate(items) if item]
        fetched = fetch_and_decode([items[i] for i in present], size, resize_mode, retries)
        images = np.zeros((len(items), size, size, 3), np.uint8)
        images[present] = fetched.images
        errors = [f"no image: the row's '{source}' is empty"] * len(items)
        for i, error in zip(present, fetched.errors):
            errors[i] = error
    return table.append_column(PIXELS, ArrowTensorArray.from_numpy(images)).append_column(
        DECODE_ERROR, pa.array([e or None for e in errors], pa.string()))


def fit_pixels(column: pa.ChunkedArray, size: int, resize_mode: str) -> tuple[np.ndarray, list[str]]:
    """Decoded images of any size (uint8; gray, RGB or RGBA) as model input, with an error for each that is not."""
    from pipeline.images import resize

    images = np.zeros((len(column), size, size, 3), np.uint8)
    errors = [""] * len(column)
    rows = column.combine_chunks().to_numpy(zero_copy_only=False) if len(column) else []
    for i, pixels in enumerate(rows):
        if pixels is None:
            errors[i] = "no image: the row's 'image' is empty"
            continue
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8:
            errors[i] = f"the 'image' column holds {pixels.dtype} pixels; pipeline.predict takes uint8 (0-255)"
            continue
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4) or 0 in pixels.shape:
            errors[i] = f"the 'image' column holds an array of shape {pixels.shape}; expected (height, width, 3)"
            continue
        if pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        images[i] = resize(np.ascontiguousarray(pixels[:, :, :3]), (size, size), resize_mode)
    return images, errors


class DatasetPredictor(Predictor):
    """Actor: the labeling job's predictor, keeping each row's own columns and adding the prediction columns."""

    def __call__(self, table: pa.Table) -> pa.Table:
        pixels = table.column(PIXELS)
        images = pixels.combine_chunks().to_numpy() if len(pixels) else np.zeros((0, 1, 1, 3), np.uint8)
        columns = self.result_columns(images, table.column(DECODE_ERROR).to_pylist())
        table = table.drop_columns([PIXELS, DECODE_ERROR])
        for name, values in columns.items():
            field = self.schema.field(name)
            table = table.append_column(field, values if isinstance(values, pa.Array)
                                        else pa.array(values, field.type))
        return table
