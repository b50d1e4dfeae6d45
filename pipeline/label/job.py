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
from typing import Callable, Iterator

import pyarrow as pa

from pipeline import storage
from pipeline.errors import JobFailedError, UserError
from pipeline.label.config import LabelConfig, LabelSummary
from pipeline.label.feed import read_and_decode
from pipeline.label.lease import Lease
from pipeline.label.manifest import RunManifest
from pipeline.label.output import PartWriter, check_writable, prepare_output
from pipeline.label.predictor import Predictor, model_input_size
from pipeline.listing import image_identity, list_images
from pipeline.models.loading import check_model
from pipeline.ray_session import ray_session


def run_label_job(config: LabelConfig, progress: Callable[[str], None] = lambda s: None) -> LabelSummary:
    """Run the labeling job described by ``config``; UserError before any cluster work on bad input."""
    started = time.monotonic()
    config.validate()
    storage.set_storage_options(config.storage_options)
    check_model(config.model, config.weights)
    size = model_input_size(config.model)
    listing = list_images(config.source)
    paths = listing.paths[: config.limit] if config.limit else listing.paths
    wanted = RunManifest(model=_model_identity(config.model), weights=config.weights, top_k=config.top_k,
                         input_size=size, source=config.source)
    check_writable(config.output)
    with Lease.acquire(config.output, config.lease_seconds, config.force_unlock) as lease:
        if lease.taken_over is not None:
            progress(f"took over the lease of a run that stopped: {lease.taken_over.describe()}")
        state = prepare_output(config.output, config.mode, wanted, config.retry_errors)
        todo = [p for p in paths if image_identity(p) not in state.done]
        summary = LabelSummary(len(paths), len(paths) - len(todo), 0, 0, listing.ignored, 0.0, state.retried)
        progress(f"{len(paths)} images listed ({listing.ignored} other files ignored), "
                 f"{summary.skipped} already in OUTPUT, {len(todo)} to label")
        if todo:
            writer = PartWriter(config.output, state.manifest, config.rows_per_file, config.seconds_per_file,
                                before_commit=lease.check)
            _run_on_ray(config, todo, size, summary, writer)
    summary.seconds = time.monotonic() - started
    return summary


def _model_identity(model: str) -> str:
    """The registry's own spelling of a name (EfficientNet-Lite0 -> efficientnet_lite0), else the location."""
    from pipeline.models.loading import resolve_spec

    spec = resolve_spec(model)
    return spec.name if spec is not None else model


def _error_rate_exceeded(config: LabelConfig, summary: LabelSummary, todo: int, table: pa.Table) -> str | None:
    """--max-error-rate: why to stop, once enough rows are in to judge and too many of them failed."""
    seen = summary.labeled
    if config.max_error_rate is None or seen < min(todo, MIN_ROWS_FOR_ERROR_RATE):
        return None
    if summary.errors / seen <= config.max_error_rate:
        return None
    example = next((e for e in table.column("error").to_pylist() if e), "")
    return (f"stopped early: {summary.errors} of the first {seen} images failed, more than --max-error-rate "
            f"{config.max_error_rate:g} (e.g. '{example[:120]}'); check SOURCE, credentials and "
            "--storage-options, then re-run with --resume --retry-errors")


MIN_ROWS_FOR_ERROR_RATE = 32  # rows seen before --max-error-rate judges (fewer: one bad batch decides)


def _run_on_ray(config: LabelConfig, todo: list[str], size: int, summary: LabelSummary,
                writer: PartWriter) -> None:
    with ray_session(config.address):
        try:
            for table in _prediction_stream(config, todo, size):
                writer.add(table)
                summary.labeled += table.num_rows
                summary.errors += table.num_rows - table.column("error").null_count
                stop = _error_rate_exceeded(config, summary, len(todo), table)
                if stop:
                    writer.flush()  # keep what was answered: 'pipeline show --errors' lists the failures
                    raise JobFailedError(stop)
            writer.flush()
        except (UserError, JobFailedError, KeyboardInterrupt):
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
