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

import dataclasses
import math
import sys
import time
from typing import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.errors import Interrupted, JobFailedError, UserError
from pipeline.label.config import LabelConfig, LabelSummary
from pipeline.label.feed import decode_task_memory, read_and_decode
from pipeline.label.lease import Lease
from pipeline.label.listing_record import ListingRecorder, read_record
from pipeline.label.manifest import RunManifest, read_manifest
from pipeline.label.output import PartWriter, check_writable, prepare_output, scan_parts
from pipeline.label.predictor import Predictor
from pipeline.label.progress import Progress
from pipeline.label.todo import TodoFeed
from pipeline.listing import open_listing
from pipeline.plural import plural
from pipeline.results import part_files
from pipeline.models.resolved import ResolvedModel, resolve_model
from pipeline.models.shipping import ship
from pipeline.ray_session import quiet_ray_data, ray_session


def run_label_job(config: LabelConfig, progress: Callable[[str], None] = lambda s: None) -> LabelSummary:
    """Run the labeling job described by ``config``; UserError on bad input before anything is written.

    Every refusal about OUTPUT comes before SOURCE is listed; the listing then streams while labeling
    runs (``pipeline.label.todo``). Raises JobFailedError (after committing every row it could) when some
    images could not be read because of transient storage errors: they are not stored, so ``--resume``
    retries them; StorageError (exit 1, one line) when a storage call of the driver failed after retries.
    """
    started = time.monotonic()
    config.validate()  # again: a library caller may have changed a field since construction
    storage.set_storage_options(config.storage_options)
    Lease.refuse_if_held(config.output, config.force_unlock)  # a busy OUTPUT: refused before anything else
    model = resolve_model(config.model, config.weights, config.model_settings)  # the one look at the model
    for note in model.notes:
        progress(note)
    if config.embeddings:
        model.require_features()
    config = dataclasses.replace(config, resize=_resize_mode(config, model, progress))
    wanted = RunManifest(model=model.name, weights=config.weights, top_k=config.top_k,
                         input_size=model.input_size, source=config.source, precision=config.precision,
                         xla=config.xla, resize_mode=config.resize, embeddings=config.embeddings,
                         model_identity=model.identity)
    if config.dry_run:
        return dry_run(config, wanted, started, progress)
    check_writable(config.output, config.read_retries)
    with Lease.acquire(config.output, config.lease_seconds, config.force_unlock, config.read_retries) as lease:
        if lease.taken_over is not None:
            progress(f"took over the lease of a run that stopped: {lease.taken_over.describe()}")
        state = prepare_output(config.output, config.mode, wanted, config.retry_errors, config.read_retries)
        listing = open_listing(config.source, config.read_retries, config.limit)  # SOURCE checked, not yet listed
        with _todo_feed(config, listing, state, progress) as feed:
            summary = LabelSummary(0, 0, 0, 0, 0, 0.0, retried=state.retried)
            writer = PartWriter(config.output, state.manifest, config.rows_per_file, config.seconds_per_file,
                                before_commit=lease.check, retries=config.read_retries)
            # A listing that ends at once with nothing left (a finished job's resume) never starts Ray; one
            # still running after a second starts Ray meanwhile, as the job will most likely need it.
            try:
                told = (feed.wait_for_work(timeout=1.0)
                        and _run_on_ray(config, feed, model, summary, writer, started, progress))
                feed.wait_for_work()  # the listing's own error, if it failed after the last wave
            except KeyboardInterrupt:  # while listing, before Ray: nothing of this run is committed
                raise _interrupted(writer.rows_committed, feed, summary) from None
            _count_listing(summary, feed)
            if not told:
                _say_listed(feed, progress)
    summary.seconds = time.monotonic() - started
    if summary.transient:
        progress(summary.line(config.output))
        raise JobFailedError(f"{summary.transient} images could not be read after retries (transient storage "
                             f"errors such as throttling, timeouts or 5xx; first: {summary.first_transient}); "
                             f"nothing was stored for them and the other {summary.labeled} rows are committed: "
                             "re-run with --resume to finish")
    return summary


def _todo_feed(config: LabelConfig, listing, state, progress: Callable[[str], None]) -> TodoFeed:
    """The feed of what is left: from the listing recorded in OUTPUT when a resume may reuse it, else from a
    fresh listing of SOURCE, recorded as it goes."""
    record = _reusable_record(config)
    if record is not None:
        progress(f"reusing the listing recorded in OUTPUT on {record.created} ({record.images:,} images; "
                 "--relist lists SOURCE again)")
        return TodoFeed(None, state.done, recorded=(config.output, record), retries=config.read_retries)
    recorder = ListingRecorder(config.output, config.read_retries)
    return TodoFeed(listing, state.done, recorder=recorder, retries=config.read_retries)


def _reusable_record(config: LabelConfig):
    """OUTPUT's recorded listing when this run may reuse it: a --resume without --relist, of the same SOURCE
    and --limit as the run that recorded it."""
    if config.mode != "resume" or config.relist:
        return None
    record = read_record(config.output, config.read_retries)
    return record if record is not None and (record.source, record.limit) == (config.source, config.limit) else None


def _count_listing(summary: LabelSummary, feed: TodoFeed) -> None:
    summary.listed, summary.skipped, summary.ignored = feed.listed, feed.skipped, feed.ignored


def _say_listed(feed: TodoFeed, progress: Callable[[str], None]) -> None:
    progress(f"{plural(feed.listed, 'image')} listed ({plural(feed.ignored, 'other file')} ignored), "
             f"{feed.skipped:,} already in OUTPUT, {feed.todo:,} to label")
    if feed.removed:
        progress(f"{plural(feed.removed, 'image')} in OUTPUT {'is' if feed.removed == 1 else 'are'} no longer in "
                 "SOURCE (their rows are kept)")


def dry_run(config: LabelConfig, wanted: RunManifest, started: float,
            progress: Callable[[str], None]) -> LabelSummary:
    """List SOURCE and compare it with OUTPUT without writing anything or starting Ray: the counts a run would
    start from. Reads what a resume would read (the recorded listing, unless --relist)."""
    listing = open_listing(config.source, config.read_retries, config.limit)
    existing = read_manifest(config.output, config.read_retries)
    scan = scan_parts(part_files(config.output, config.read_retries), existing,
                      skip_errors=config.retry_errors, retries=config.read_retries)
    if scan.foreign:
        progress(f"note: OUTPUT holds {len(scan.foreign)} part file(s) another run wrote; a run would refuse them")
    if existing is not None and config.mode != "resume":
        progress("note: OUTPUT holds a previous run; a run would need --resume (or --overwrite, which starts "
                 "from nothing)")
    if existing is not None and existing.differences(wanted):
        progress("note: --resume would be refused: " + "; ".join(existing.differences(wanted)))
    record = _reusable_record(config)
    feed = TodoFeed(None if record else listing, scan.done, recorded=(config.output, record) if record else None,
                    retries=config.read_retries, spill=False)
    with feed:
        feed.wait_until_finished()  # counts only: nothing is spilled to be taken
    summary = LabelSummary(feed.listed, feed.skipped, 0, 0, feed.ignored, time.monotonic() - started, dry_run=True)
    summary.left = feed.todo
    summary.removed = feed.removed
    return summary


def _resize_mode(config: LabelConfig, model: ResolvedModel, progress: Callable[[str], None]) -> str:
    """--resize as given, else the model's own: a fine-tuned model is labeled the way it was trained."""
    if config.resize is None:
        return model.resize_mode
    if config.resize != model.resize_mode and model.kind == "artifact":
        progress(f"--resize {config.resize}: '{config.model}' was fine-tuned with --resize {model.resize_mode}; "
                 f"labeling with {config.resize} as asked (the manifest records it)")
    return config.resize


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


# Paths the driver hands Ray Data at once. The first wave is small, so the first rows come back after
# seconds at any size (planning a wave takes about 3 s a million paths); later ones are larger, so the
# actors' restart between waves (their TensorFlow import, model load and warm-up) costs little.
FIRST_WAVE_PATHS = 131_072
WAVE_PATHS = 1_000_000


def _run_on_ray(config: LabelConfig, feed: TodoFeed, model: ResolvedModel, summary: LabelSummary,
                writer: PartWriter, started: float, progress: Callable[[str], None]) -> bool:
    """Label what the feed holds, one Ray Data execution a wave: each wave takes the paths listed and not yet
    taken (at most ``WAVE_PATHS``), so the first wave starts on the first listed images. True when it has
    said the listing's counts (they are said the moment the listing ends)."""
    meter = Progress(None, enabled=config.progress)
    meter.started = started
    told_listed = False
    with ray_session(config.address, verbose=config.verbose):
        try:
            if not feed.wait_for_work():
                return False  # the listing ended, and nothing was left after all
            while (paths := feed.take(WAVE_PATHS if feed.taken else FIRST_WAVE_PATHS)) is not None:
                meter.set_total(feed.todo - summary.transient, final=feed.finished, listed=feed.listed)
                for table in _prediction_stream(config, paths, model):
                    table = _hold_back_transient(table, summary)
                    writer.add(table)
                    errors = table.num_rows - table.column("error").null_count
                    summary.labeled += table.num_rows
                    summary.errors += errors
                    meter.set_total(feed.todo - summary.transient, final=feed.finished, listed=feed.listed)
                    meter.update(table.num_rows, errors)
                    if feed.finished and not told_listed and feed.error is None:
                        told_listed = True
                        meter.clear_line()
                        _say_listed(feed, progress)
                    stop = _error_rate_exceeded(config, summary, feed.todo, table)
                    if stop:
                        writer.flush()  # keep what was answered: 'pipeline show --errors' lists the failures
                        raise JobFailedError(stop)
                writer.flush()
            writer.flush()
        except (UserError, JobFailedError):
            _flush_quietly(writer)
            raise
        except KeyboardInterrupt:
            _flush_quietly(writer)
            raise _interrupted(writer.rows_committed, feed, summary) from None
        except Exception as err:  # noqa: BLE001 - report, do not dump a Ray traceback on the user
            _flush_quietly(writer)
            print(f"labeling failed: {type(err).__name__}: {err}", file=sys.stderr)
            raise JobFailedError(f"the labeling job failed after {writer.rows_committed} rows were committed "
                                 f"({type(err).__name__}); re-run with --resume to finish it") from err
        finally:
            meter.close()
    summary.startup_seconds = meter.startup_seconds
    summary.steady_images_per_second = meter.steady_rate()
    return told_listed


def _interrupted(committed: int, feed: TodoFeed, summary: LabelSummary) -> Interrupted:
    """Where the job stands when the user stopped it: what is safe in OUTPUT and what --resume will do."""
    left = max(0, feed.todo - summary.labeled)
    listed = "" if feed.finished else f" of the {feed.listed:,} listed so far (the listing had not ended)"
    before = f" (and {feed.skipped:,} from before)" if feed.skipped else ""
    return Interrupted(f"interrupted: this run committed {plural(committed, 'row')}{before}, all safe in OUTPUT; "
                       f"{plural(left, 'image')}{listed} left to label: --resume finishes the job")


def _flush_quietly(writer: PartWriter) -> None:
    """Commit the rows already answered before a failure is reported, unless committing is what failed."""
    try:
        writer.flush()
    except Exception:  # noqa: BLE001 - the first failure is the one to report
        pass


def _hold_back_transient(table: pa.Table, summary: LabelSummary) -> pa.Table:
    """Drop the rows whose reads failed for a reason that may pass: they must not count as done."""
    flags = table.column("transient")
    held = pc.sum(flags).as_py() or 0
    if held:
        if not summary.transient:
            first = table.filter(flags).slice(0, 1).to_pylist()[0]
            summary.first_transient = f"{first['path']}: {first['error']}"
        summary.transient += held
        table = table.filter(pc.invert(flags))
    return table.drop_columns(["transient"])


def auto_concurrency(config: LabelConfig, resources: dict[str, float], blocks: int) -> tuple[int, int]:
    """How many predictor actors fit the cluster now: one per GPU share, or on CPUs one per core (each
    runs TensorFlow on its own ``cpus_per_actor`` threads, which beats one actor on every core: 241 vs
    99 images/s for MobileNetV2 on 2 cores) with room left for the decode tasks; never more than blocks."""
    if config.num_gpus:
        fit = int(resources.get("GPU", 0) // config.num_gpus)
    else:
        cpus = resources.get("CPU", 1)
        fit = min(int(cpus), int((cpus - config.cpus_per_decode) // config.cpus_per_actor))
    size = max(1, min(fit, blocks))
    return size, size


def actor_cpu_threads(config: LabelConfig) -> int | None:
    """TensorFlow threads of a CPU predictor actor: its own CPU share (at least one), so actors side by side
    do not each spread a batch over every core; None for GPU actors, whose CPU threads only feed the GPU."""
    return None if config.num_gpus else max(1, int(config.cpus_per_actor))


# Decoded images the object store may hold per predictor actor: 6 blocks of 128 (4 starved the actors now
# and then on 2 cores; 6 cost no wall time), 3 of 256. Never fewer than 3 blocks: the one an actor works
# on, its next one, and one being decoded.
IMAGES_BUFFERED_PER_ACTOR = 768
MIN_BLOCKS_BUFFERED_PER_ACTOR = 3


def blocks_buffered_per_actor(task_size: int) -> int:
    return max(MIN_BLOCKS_BUFFERED_PER_ACTOR, math.ceil(IMAGES_BUFFERED_PER_ACTOR / task_size))


def bound_decoded_backlog(actors: int, task_size: int, image_bytes: int) -> int:
    """Cap the object store memory the job's blocks may hold: ``blocks_buffered_per_actor`` decoded
    blocks of ``task_size`` images for each predictor actor.

    Decoding is 5-10x faster than a CPU forward pass, so without a cap the decode tasks run ahead
    and park decoded pixels in the object store until Ray Data's default budget (a share of the
    whole store) is full: peak memory then grows with the number of images (4.4 -> 5.5 GiB from 1,500
    to 6,000 images on 2 cores). Ray Data never uses more than its default, so this only lowers it.
    The cap counts images, not blocks: 6 blocks of 256 images held 0.4 GiB more at 6,000 images than 6
    of 128 (5.49 vs 5.07 GiB peak RSS) for no more speed; 3 of 256 held 5.09.
    """
    from ray.data import DataContext

    limit = max(1, actors) * blocks_buffered_per_actor(task_size) * task_size * image_bytes
    options = DataContext.get_current().execution_options
    options.resource_limits = options.resource_limits.copy(object_store_memory=limit)
    return limit


def _prediction_stream(config: LabelConfig, todo: Sequence[str] | pa.Array,
                       model: ResolvedModel) -> Iterator[pa.Table]:
    """Result tables, streamed to the driver as the actors produce them."""
    quiet_ray_data(config.verbose)
    return label_dataset(config, todo, model).iter_batches(batch_size=None, batch_format="pyarrow")


def path_blocks(todo: Sequence[str] | pa.Array, task_size: int) -> list[pa.Table]:
    """The paths as input blocks of exactly ``task_size`` rows (the last one shorter).

    Each stage takes ``task_size`` rows per task, and Ray Data bundles input blocks until they hold that
    many rows. Evenly split blocks (1,500 paths in 12 blocks of 125) made every task take two blocks and
    return its rows only when both were done: results reached the driver in bursts of 250, a task late,
    and at the end one actor worked through its last two blocks while the other sat idle (600 images:
    3 tasks for 2 actors). Blocks of exactly ``task_size`` rows make one task per block.
    """
    paths = todo if isinstance(todo, pa.Array) else pa.array(list(todo), pa.string())
    return [pa.table({"path": paths.slice(start, task_size)})
            for start in range(0, len(paths), task_size)] or [pa.table({"path": pa.array([], pa.string())})]


def label_dataset(config: LabelConfig, todo: Sequence[str] | pa.Array, model: ResolvedModel):
    """The Ray Data pipeline: paths -> decode tasks -> predictor actors -> result tables.

    Decoding and inference are two operators that run at the same time: decode tasks on any
    node's CPUs, predictor actors where their GPUs/CPUs are. Ray Data fuses a task map into
    the next actor map when their remote args are equal, which would make each actor decode,
    then predict, never both at once. Decode tasks declare the memory they hold (a batch of
    pixels, the objects in flight), which the actors do not, so the two never fuse.
    """
    import ray

    task_size, size = config.task_size, model.input_size
    blocks = max(1, math.ceil(len(todo) / task_size))
    low, high = config.concurrency or auto_concurrency(config, ray.cluster_resources(), blocks)
    bound_decoded_backlog(high, task_size, size * size * 3)
    # Blocks built here, with their metadata: from_arrow runs a Ray task per block to read it back, which
    # held the driver 9-13 s for a million paths (3-4 s here) and waits for a free CPU on a busy cluster.
    dataset = ray.data.from_blocks(path_blocks(todo, task_size))
    dataset = dataset.map_batches(read_and_decode, fn_kwargs=decode_arguments(config, model), batch_format="numpy",
                                  **decode_stage(config, model))
    return dataset.map_batches(Predictor, fn_constructor_kwargs=predictor_arguments(config, model),
                               batch_format="numpy", **predictor_stage(config, low, high))


def decode_arguments(config: LabelConfig, model: ResolvedModel) -> dict:
    """What each decode task reads and decodes with: the model's size, the resize mode, storage and retries."""
    return {"size": model.input_size, "storage_options": config.storage_options, "retries": config.read_retries,
            "resize_mode": config.resize or model.resize_mode}


def decode_stage(config: LabelConfig, model: ResolvedModel) -> dict:
    """The decode tasks' batch and resources (their declared memory keeps them from fusing with the actors)."""
    return {"batch_size": config.task_size, "num_cpus": config.cpus_per_decode,
            "memory": decode_task_memory(config.task_size, model.input_size)}


def predictor_arguments(config: LabelConfig, model: ResolvedModel) -> dict:
    """What each predictor actor loads: the resolved model (local files shipped to its node) and how to run it."""
    return {"model": ship(model.location), "weights": ship(model.weights), "top_k": config.top_k,
            "batch_size": config.batch_size, "storage_options": config.storage_options,
            "precision": config.precision, "xla": config.xla, "settings": model.settings,
            "embeddings": config.embeddings, "cpu_threads": actor_cpu_threads(config)}


def predictor_stage(config: LabelConfig, low: int, high: int) -> dict:
    """The predictor actor pool: between ``low`` and ``high`` actors, each with its GPU share or CPUs."""
    from ray.data import ActorPoolStrategy

    return {"batch_size": config.task_size, "compute": ActorPoolStrategy(min_size=low, max_size=high),
            "num_gpus": config.num_gpus or None, "num_cpus": config.cpus_per_actor}
