"""The distributed labeling job: image paths -> Ray Data -> top-k -> exactly-once Parquet.

    paths --read+decode+resize (CPU tasks)--> uint8 batches
          --predict (actor pool, one model per actor)--> top-k rows
          --commit (driver: atomic part files)--> OUTPUT/part-*.parquet

Results are ~200 bytes an image, so the driver commits them itself: it is the
only writer, a part file appears whole or not at all, and a resumed run skips
every path already committed. Ray retries a task or restarts an actor that
died, and the streaming executor hands each output block to the driver once,
so no path is written twice.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from pipeline import storage
from pipeline.errors import JobFailedError, UserError
from pipeline.images import decode_or_error
from pipeline.listing import list_images
from pipeline.models.loading import check_model
from pipeline.models.registry import DEFAULT_MODEL
from pipeline.ray_session import ray_session
from pipeline.results import SCHEMA, PartWriter, prepare_output


@dataclass
class LabelConfig:
    source: str  # folder, glob or list file; local or fsspec URL
    output: str  # folder or bucket prefix for the Parquet parts
    model: str = DEFAULT_MODEL  # registry name or fine-tuned artifact location
    weights: str = "imagenet"  # imagenet | none | weights file path/URL
    top_k: int = 5  # classes kept per image
    batch_size: int = 32  # images per forward pass
    batches_per_task: int = 4  # forward passes per Ray task: fewer, larger tasks cut scheduling overhead
    concurrency: tuple[int, int] = (1, 1)  # predictor actors: (min, max)
    num_gpus: float = 0.0  # GPUs per predictor actor (fractions share a GPU)
    cpus_per_decode: float = 1.0  # CPUs reserved by each decode task
    cpus_per_actor: float = 1.0  # CPUs reserved by each predictor actor
    mode: str = "new"  # new | resume | overwrite
    address: str | None = None  # Ray cluster to join; None starts a local one
    limit: int | None = None  # label only the first N listed images
    rows_per_file: int = 10_000  # rows per committed part file
    seconds_per_file: float = 30.0  # also commit at least this often
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options


@dataclass
class LabelSummary:
    listed: int  # images found in SOURCE (after --limit)
    skipped: int  # already in OUTPUT (resume)
    labeled: int  # rows written by this run
    errors: int  # rows written with an error
    ignored: int  # non-image files in SOURCE
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.labeled / self.seconds if self.seconds > 0 else 0.0

    def line(self, output: str) -> str:
        return (f"labeled {self.labeled} images ({self.errors} errors, {self.ignored} ignored files, "
                f"{self.skipped} already done) in {self.seconds:.1f} s: "
                f"{self.images_per_second:.1f} images/s -> {output}")


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


class Predictor:
    """Actor: loads the model once, then turns decoded batches into top-k result rows."""

    def __init__(self, model: str, weights: str, top_k: int, batch_size: int, storage_options: dict[str, Any]):
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)  # fractional-GPU actors share a card

        from pipeline.inference import CompiledClassifier
        from pipeline.models.loading import load_model

        storage.set_storage_options(storage_options)
        self.classifier = CompiledClassifier(load_model(model, weights), top_k=top_k, batch_size=batch_size)
        self.model_name = self.classifier.loaded.name

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        errors = [str(e) if e else None for e in batch["error"]]
        ok = np.array([e is None for e in errors], dtype=bool)
        n, k = len(errors), self.classifier.top_k
        ids = np.zeros((n, k), np.int32)
        scores = np.zeros((n, k), np.float32)
        if ok.any():
            top = self.classifier.predict(batch["image"][ok])
            ids[ok], scores[ok] = top.ids, top.scores
        names = self.classifier.names(ids)
        return pa.table(
            {
                "path": [str(p) for p in batch["path"]],
                "label": [names[i][0] if ok[i] else None for i in range(n)],
                "score": [float(scores[i, 0]) if ok[i] else None for i in range(n)],
                "top_labels": [names[i] if ok[i] else [] for i in range(n)],
                "top_scores": [scores[i].tolist() if ok[i] else [] for i in range(n)],
                "top_ids": [ids[i].tolist() if ok[i] else [] for i in range(n)],
                "model": [self.model_name] * n,
                "error": errors,
            },
            schema=SCHEMA,
        )


def model_input_size(model: str) -> int:
    """The square size images are decoded to, known without building the model."""
    from pipeline.models import artifact
    from pipeline.models.loading import resolve_spec

    spec = resolve_spec(model)
    return spec.input_size if spec is not None else artifact.read_meta(model).input_size


def run_label_job(config: LabelConfig, progress: Callable[[str], None] = lambda s: None) -> LabelSummary:
    """Run the labeling job described by ``config``; UserError before any cluster work on bad input."""
    started = time.monotonic()
    storage.set_storage_options(config.storage_options)
    check_model(config.model, config.weights)
    size = model_input_size(config.model)
    listing = list_images(config.source)
    paths = listing.paths[: config.limit] if config.limit else listing.paths
    done = prepare_output(config.output, config.mode)
    todo = [p for p in paths if p not in done]
    summary = LabelSummary(len(paths), len(paths) - len(todo), 0, 0, listing.ignored, 0.0)
    progress(f"{len(paths)} images listed ({listing.ignored} other files ignored), "
             f"{summary.skipped} already in OUTPUT, {len(todo)} to label")
    if todo:
        _run_on_ray(config, todo, size, summary)
    summary.seconds = time.monotonic() - started
    return summary


def _run_on_ray(config: LabelConfig, todo: list[str], size: int, summary: LabelSummary) -> None:
    with ray_session(config.address):
        try:
            writer = PartWriter(config.output, config.rows_per_file, config.seconds_per_file)
            for table in _prediction_stream(config, todo, size):
                writer.add(table)
                summary.labeled += table.num_rows
                summary.errors += table.num_rows - table.column("error").null_count
            writer.flush()
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as err:  # noqa: BLE001 - report, do not dump a Ray traceback on the user
            print(f"labeling failed: {type(err).__name__}: {err}", file=sys.stderr)
            raise JobFailedError(f"the labeling job failed after {summary.labeled} rows were committed "
                                 f"({type(err).__name__}); re-run with --resume to finish it") from err


def _prediction_stream(config: LabelConfig, todo: list[str], size: int) -> Iterator[pa.Table]:
    """The Ray Data pipeline: paths -> decode tasks -> predictor actors -> result tables, streamed."""
    import ray
    from ray.data import ActorPoolStrategy

    low, high = config.concurrency
    task_size = config.batch_size * config.batches_per_task
    dataset = ray.data.from_items(
        [{"path": p} for p in todo],
        override_num_blocks=max(1, math.ceil(len(todo) / task_size)),
    )
    dataset = dataset.map_batches(
        read_and_decode,
        fn_kwargs={"size": size, "storage_options": config.storage_options},
        batch_size=task_size,
        batch_format="numpy",
        num_cpus=config.cpus_per_decode,
    )
    dataset = dataset.map_batches(
        Predictor,
        fn_constructor_kwargs={"model": config.model, "weights": config.weights, "top_k": config.top_k,
                               "batch_size": config.batch_size, "storage_options": config.storage_options},
        batch_size=task_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=low, max_size=high),
        num_gpus=config.num_gpus or None,
        num_cpus=config.cpus_per_actor,
    )
    return dataset.iter_batches(batch_size=None, batch_format="pyarrow")
