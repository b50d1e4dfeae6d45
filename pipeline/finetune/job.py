"""The fine-tuning job's driver: settings, input, Ray Train, export.

Check the settings and the input (before any Ray work; on --resume, that
OUTPUT's run was trained on the same data), decode the images once with Ray Data, run
a ``DataParallelTrainer`` (the loop is in ``pipeline.finetune.worker``, TF_CONFIG from
``pipeline.finetune.backend``), then export the best epoch and write ``history.csv``, ``curves.png``
and the per-class report into OUTPUT.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from pipeline import storage
from pipeline.errors import JobFailedError, UserError
from pipeline.fetch import DEFAULT_RETRIES
from pipeline.finetune.base import TrainingBase, resolve_base
from pipeline.finetune.data import (DECODE_MODES, SHUFFLE_SEED, DecodedSplit, LabeledFiles, LabelsSource,
                                    choose_decode, decode_split, list_training_files,
                                    shuffled, split_digest, stream_split)
from pipeline.finetune.model import DEFAULT_AUGMENT, parse_augment
from pipeline.finetune.resume import (RUN_NAME, ResumePlan, check_same_run, last_checkpoint_state, plan_resume,
                                      recorded_settings)
from pipeline.images import RESIZE_MODES
from pipeline.json_option import parse_json_object
from pipeline.models.registry import DEFAULT_MODEL
from pipeline.plural import plural

CHECKPOINTS_KEPT = 2


MONITORS = ("val_accuracy", "val_loss")  # what picks the exported epoch (--best-by)
LR_SCHEDULES = ("cosine", "constant")


@dataclass
class FinetuneConfig:
    """What a fine-tuning run is asked to do; it checks itself on construction (UserError, exit 2)."""

    data: str  # class-per-subfolder training images, or a labels table (CSV/Parquet, a labeling OUTPUT); local or URL
    output: str  # checkpoints, history, curves and the exported model go here
    base: str = DEFAULT_MODEL  # registry name of the pretrained base, or a fine-tuned model folder to train further
    workers: int = 2  # Ray Train workers (data-parallel replicas)
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = 1.0  # CPUs Ray reserves for each worker
    epochs: int = 5  # stage 1: head only, base frozen
    fine_tune_epochs: int = 0  # stage 2: top of the base unfrozen
    unfreeze: int | None = 20  # base layers unfrozen in stage 2 (None: all); BatchNorm stays frozen
    batch_size: int = 32  # images per worker per step; the global batch is this x workers
    lr: float = 1e-3  # peak Adam learning rate of stage 1
    fine_tune_lr_factor: float = 0.3  # stage 2 peak learning rate = lr x this (0.1 measured worse on digits)
    lr_schedule: str = "cosine"  # cosine: linear warmup, then cosine decay, per stage | constant
    dropout: float = 0.2  # dropout before the new dense layer
    val_fraction: float = 0.2  # hold-out share per class (decided per file by a hash) when no --val folder
    val: str | None = None  # separate validation folder (the same class subfolders) or labels table
    path_column: str = "path"  # labels tables: the column of image paths (relative ones: to the table's folder)
    label_column: str = "label"  # labels tables: the column of class names
    min_score: float | None = None  # labels tables with a score column (a labeling OUTPUT): rows scored at least this
    image_size: int | None = None  # train at this square size (default: the base's native size)
    resize: str = "squash"  # squash | center-crop: how images are fitted to image_size; the export records it
    augment: tuple[str, ...] = DEFAULT_AUGMENT  # random transforms on training batches (never exported)
    cache_features: bool = False  # frozen base + no augmentation: compute base features once, train the head
    decode: str = "auto"  # once (into Ray's object store) | every-epoch (streamed) | auto: once when it fits
    best_by: str = "val_accuracy"  # the exported epoch is the best by this (val_accuracy | val_loss)
    patience: int = 0  # end a stage after this many epochs without a better best_by (0: never)
    seed: int = SHUFFLE_SEED  # head initialization and training order
    shuffle_buffer: int = 1024  # rows each worker shuffles locally, on top of the per-epoch block shuffle
    resume: bool = False  # continue from the last checkpoint in OUTPUT (same data and settings)
    overwrite: bool = False  # discard a previous run in OUTPUT
    address: str | None = None  # Ray cluster address; None starts a local Ray here
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for DATA/OUTPUT
    read_retries: int = DEFAULT_RETRIES  # rounds of re-reading an image after a transient storage error
    verbose: bool = False  # forward the workers' output (TensorFlow, Ray Train, Ray Data) to this console

    def __post_init__(self) -> None:
        if isinstance(self.augment, str):
            self.augment = parse_augment(self.augment)
        self.augment = tuple(self.augment)
        if isinstance(self.storage_options, str) or self.storage_options is None:
            self.storage_options = parse_json_object(self.storage_options, "--storage-options") or {}
        check_settings(self)


def check_mode(resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: --resume continues the run in OUTPUT, "
                        "--overwrite discards it")


@dataclass
class FinetuneSummary:
    classes: list[str]
    train_images: int  # images decoded for training (after skipping corrupt ones)
    val_images: int
    skipped: list[tuple[str, str]]  # (path, error) of images that could not be decoded
    history: list[dict[str, Any]]
    workers: int
    seconds: float = 0.0
    chosen_epoch: int = 0  # the epoch whose weights were exported
    best_by: str = "val_accuracy"
    confused: list[tuple[str, str, int]] = field(default_factory=list)  # worst (true, predicted, count)
    stopped_early: bool = False

    @property
    def best(self) -> dict[str, Any]:
        """The exported epoch's row of the history."""
        return next(row for row in self.history if row["epoch"] == self.chosen_epoch)

    @property
    def images_per_second(self) -> float:
        """Training throughput of all workers together (images through a train step per second)."""
        seconds = sum(row["train_seconds"] for row in self.history)
        return sum(row["train_images"] for row in self.history) / seconds if seconds else 0.0

    def line(self, output: str) -> str:
        best = self.best
        confused = ", ".join(f"{true}->{pred} ({count})" for true, pred, count in self.confused) or "none"
        return (f"fine-tuned {len(self.classes)} classes on {plural(self.train_images, 'image')} with "
                f"{plural(self.workers, 'worker')}: exported epoch {best['epoch']} (best {self.best_by}), val accuracy "
                f"{best['val_accuracy']:.4f}, val loss {best['val_loss']:.4f}; "
                f"{plural(len(self.history), 'epoch')}{' (stopped early)' if self.stopped_early else ''}, "
                f"{self.seconds:.1f} s, {self.images_per_second:.1f} images/s, "
                f"{plural(len(self.skipped), 'unreadable image')} skipped; most confused (true->predicted): {confused}; "
                f"model in {output}")


def run_finetune(config: FinetuneConfig, progress: Callable[[str], None] = lambda s: None) -> FinetuneSummary:
    """Run the job; UserError (before Ray starts, where possible) for anything the user must fix."""
    started = time.monotonic()
    storage.set_storage_options(config.storage_options)
    base = resolve_base(config.base)
    size = config.image_size or base.input_size or base.spec.input_size
    files = list_training_files(config.data, config.val, config.val_fraction,
                                LabelsSource(config.path_column, config.label_column, config.min_score))
    for note in files.notes:
        progress(note)
    identity = {"class_names": files.class_names, "base": base.identity, "image_size": size, "resize": config.resize,
                "split_digest": split_digest(files)}
    plan = prepare_output(config, identity)
    for note in plan.notes if plan else ():
        progress(note)
    if plan is not None and plan.finished:
        return _finish_from_checkpoint(config, base, files, size, plan, started, progress)
    if base.model is not None:
        progress(base.describe(files.class_names))
    progress(f"{len(files.class_names)} classes {files.class_names[:10]}{' ...' if len(files.class_names) > 10 else ''}: "
             f"{len(files.train)} training and {len(files.val)} validation images, {size}x{size} ({config.resize}), "
             f"{plural(config.workers, 'worker')}, augmentation: {','.join(config.augment) or 'none'}")
    import ray

    from pipeline.ray_session import quiet_ray_data, ray_session

    if config.address is None and not os.environ.get("RAY_ADDRESS") and not ray.is_initialized():
        check_local_cpus(config)  # before paying for a Ray start (not inside a Ray job: it joins the cluster)
    with ray_session(config.address, verbose=config.verbose):  # the workers' [finetune] lines come by relay
        quiet_ray_data(config.verbose)
        check_cluster_resources(config, ray.cluster_resources, progress=progress)
        # Listed files come one class after another: decode them in a seeded random order so every
        # block mixes the classes; each epoch then reshuffles the block order and a local buffer.
        decoding = choose_decode(config.decode, len(files.train) + len(files.val), size, ray.cluster_resources(),
                                 config.workers * config.cpus_per_worker)
        progress(decoding.line)
        split = decode_split if decoding.mode == "once" else stream_split
        train = split(shuffled(files.train, config.seed), size, config.batch_size, config.storage_options,
                      config.resize, config.read_retries)
        val = split(files.val, size, config.batch_size, config.storage_options, config.resize, config.read_retries)
        summary = FinetuneSummary(files.class_names, train.count, val.count, train.failed + val.failed, [],
                                  config.workers, best_by=config.best_by)
        for path, error in summary.skipped[:5]:
            progress(f"skipped {path}: {error}")
        check_decoded(train, val, config.workers)
        directory = _fit(config, base, files, size, identity, plan, train, val, progress)
        later = train.failed_later() + val.failed_later()
        if later:
            path, error = later[0]
            progress(f"{plural(len(later), 'image')} decoded before training but failed in an epoch, which went on "
                     f"without it (first: {path}: {error})")
    try:
        _finish(config, base, files, size, directory, summary, export_model=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # a local copy of the last checkpoint
    summary.seconds = time.monotonic() - started
    return summary


def _finish(config: FinetuneConfig, base: TrainingBase, files: LabeledFiles, size: int, directory: str,
            summary: FinetuneSummary, export_model: bool) -> None:
    """From the last checkpoint (a local folder): the exported model, history.csv, curves.png, the report."""
    from pipeline.finetune.curves import plot_curves, write_history
    from pipeline.finetune.report import worst_confused, write_report
    from pipeline.finetune.worker import BEST_CONFUSION_FILE, read_best_weights, read_state

    state = read_state(directory)
    summary.history, summary.chosen_epoch = state["history"], state["best"]["epoch"]
    summary.stopped_early = state["finished"]
    confusion = np.load(os.path.join(directory, BEST_CONFUSION_FILE))
    if export_model:
        export(config, base, files, size, read_best_weights(directory), summary.chosen_epoch,
               training_record(state, base))
    write_history(summary.history, config.output, summary.chosen_epoch)
    plot_curves(summary.history, config.output, f"{base.identity} fine-tuned on {config.data}",
                summary.chosen_epoch, config.best_by)
    write_report(confusion, files.class_names, config.output, summary.chosen_epoch)
    summary.confused = worst_confused(confusion, files.class_names)


def training_record(state: dict[str, Any], base: TrainingBase) -> dict[str, Any]:
    """What the exported model records of its training: what it started from, epoch counts asked for, epochs
    run, every resume."""
    settings = state.get("settings") or {}
    return {"started_from": base.model or f"{base.spec.name} (ImageNet weights)",
            "epochs": settings.get("epochs"), "fine_tune_epochs": settings.get("fine_tune_epochs"),
            "epochs_trained": len(state["history"]), "stopped_early": bool(state["finished"]),
            "resumes": state.get("resumes", [])}


def _finish_from_checkpoint(config: FinetuneConfig, base: TrainingBase, files: LabeledFiles, size: int,
                            plan: ResumePlan, started: float, progress: Callable[[str], None]) -> FinetuneSummary:
    """A resume with nothing left to train: no Ray, no decoding. The model is exported again only when the
    one in OUTPUT is not this checkpoint's (a driver killed between the last epoch and the export)."""
    import tempfile

    from pipeline.finetune.worker import read_state
    from pipeline.models.artifact import is_artifact, read_meta

    fs, root = storage.filesystem(plan.checkpoint)
    with tempfile.TemporaryDirectory(prefix="finetune-checkpoint-") as directory:
        fs.get(root.rstrip("/") + "/", directory, recursive=True)
        state = read_state(directory)
        exported = is_artifact(config.output) and _same_export(read_meta(config.output), state)
        progress(f"the run in OUTPUT finished training at epoch {state['epoch']}"
                 f"{' (stopped early)' if state['finished'] else ''}: nothing left to train; "
                 + ("its model is already exported" if exported else "exporting its best epoch"))
        last = state["history"][-1]
        summary = FinetuneSummary(files.class_names, int(last["train_images"]), int(last["val_images"]), [], [],
                                  config.workers, best_by=config.best_by)
        _finish(config, base, files, size, directory, summary, export_model=not exported)
    summary.seconds = time.monotonic() - started
    return summary


def _same_export(meta, state: dict[str, Any]) -> bool:
    return meta.epoch == state["best"]["epoch"] and (meta.training or {}).get("epochs_trained") == len(state["history"])


def check_settings(config: FinetuneConfig) -> None:
    """Every check that needs no input and no cluster: bounds, choices and conflicts of the options."""
    check_mode(config.resume, config.overwrite)
    if config.workers < 1:
        raise UserError("--workers must be at least 1")
    if config.cpus_per_worker <= 0:
        raise UserError(f"--cpus-per-worker {config.cpus_per_worker:g} must be more than 0")
    if config.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if not 0 < config.val_fraction < 1 and config.val is None:
        raise UserError(f"--val-fraction {config.val_fraction} should be between 0 and 1")
    if config.resize not in RESIZE_MODES:
        raise UserError(f"--resize '{config.resize}' is not one of {', '.join(RESIZE_MODES)}")
    if config.image_size is not None and config.image_size < 32:
        raise UserError(f"--image-size {config.image_size} is too small; use 32 or more")
    if config.epochs < 1:
        raise UserError("--epochs must be at least 1 (the new head is trained first)")
    if config.fine_tune_epochs < 0:
        raise UserError("--fine-tune-epochs must be 0 or more")
    if config.unfreeze is not None and config.unfreeze < 0:
        raise UserError("--unfreeze must be 0 or more layers, or 'all'")
    if not config.lr > 0:
        raise UserError(f"--lr {config.lr:g} must be more than 0")
    if not 0 < config.fine_tune_lr_factor <= 10:
        raise UserError(f"--fine-tune-lr-factor {config.fine_tune_lr_factor:g} should be above 0 (typically 0.01-1)")
    if not 0 <= config.dropout < 1:
        raise UserError(f"--dropout {config.dropout:g} should be at least 0 and below 1")
    if config.lr_schedule not in LR_SCHEDULES:
        raise UserError(f"--lr-schedule '{config.lr_schedule}' should be one of {', '.join(LR_SCHEDULES)}")
    if config.best_by not in MONITORS:
        raise UserError(f"--best-by '{config.best_by}' should be one of {', '.join(MONITORS)}")
    if config.patience < 0:
        raise UserError("--patience must be 0 (off) or more epochs")
    if config.shuffle_buffer < 1:
        raise UserError("--shuffle-buffer must be at least 1 image")
    if config.decode not in DECODE_MODES:
        raise UserError(f"--decode '{config.decode}' should be one of {', '.join(DECODE_MODES)}")
    if config.cache_features and (config.augment or config.fine_tune_epochs):
        raise UserError("--cache-features needs a base that never changes and images that never change: "
                        "add --augment none and leave --fine-tune-epochs at 0")
    if not isinstance(config.storage_options, dict):
        raise UserError("--storage-options must be a JSON object")
    if config.read_retries < 0:
        raise UserError("--read-retries must be 0 or more rounds")
    if config.min_score is not None and not 0 <= config.min_score <= 1:
        raise UserError(f"--min-score {config.min_score:g} should be a score between 0 and 1, e.g. 0.9")
    if not config.path_column or not config.label_column:
        raise UserError("--path-column and --label-column need a column name")


def prepare_output(config: FinetuneConfig, identity: dict[str, Any]) -> ResumePlan | None:
    """New run: OUTPUT holds none. --overwrite: remove it. --resume: it must be this data with these settings,
    and the plan says how the run goes on (None: no checkpoint yet, start)."""
    run = storage.join(config.output, RUN_NAME)
    if config.overwrite:
        fs, root = storage.filesystem(run)
        if fs.exists(root):
            fs.rm(root, recursive=True)
        return None
    if not config.resume:
        if storage.exists(run):
            raise UserError(f"OUTPUT '{config.output}' already holds a fine-tuning run; pass --resume to continue "
                            "it, --overwrite to discard it, or choose another OUTPUT")
        return None
    saved = last_checkpoint_state(config.output)
    if saved is None:
        return None  # nothing to resume yet: start
    folder, state = saved
    check_same_run(state.get("identity"), identity, config.output)
    plan = plan_resume(config, state)
    plan.checkpoint = folder
    return plan


def available_local_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def check_local_cpus(config: FinetuneConfig) -> None:
    cpus = available_local_cpus()
    if config.workers * config.cpus_per_worker > cpus:
        raise UserError(f"--workers {config.workers} needs {config.workers * config.cpus_per_worker:g} CPUs but "
                        f"this machine has {cpus}; use --workers {max(1, int(cpus // config.cpus_per_worker))} "
                        "or a cluster (--address)")


def check_cluster_resources(config: FinetuneConfig, cluster_resources: Callable[[], dict[str, float]],
                            wait_seconds: float | None = None, progress: Callable[[str], None] = lambda s: None,
                            poll_seconds: float = 2.0) -> None:
    """Enough CPUs (and GPUs) for the workers, now or after an autoscaling cluster grows (bounded wait).

    ``wait_seconds`` None: 0 for a local Ray (refuse at once), else $PIPELINE_SCALE_UP_TIMEOUT or 900 s.
    """
    from pipeline.cluster_capacity import scale_up_timeout, wait_for_capacity

    def shortfall() -> str | None:
        resources = cluster_resources()
        need_cpus = config.workers * config.cpus_per_worker
        if need_cpus > resources.get("CPU", 0):
            return (f"--workers {config.workers} needs {need_cpus:g} CPUs but the Ray cluster has "
                    f"{resources.get('CPU', 0):g}")
        if config.use_gpu and config.workers > resources.get("GPU", 0):
            return (f"--use-gpu with --workers {config.workers} needs {config.workers} GPUs but the Ray cluster "
                    f"has {resources.get('GPU', 0):g}")
        return None

    bundle = {"CPU": config.cpus_per_worker, **({"GPU": 1.0} if config.use_gpu else {})}
    wait = scale_up_timeout(config.address) if wait_seconds is None else wait_seconds
    wait_for_capacity(shortfall, [bundle] * config.workers, wait, progress, poll_seconds)


def check_decoded(train: DecodedSplit, val: DecodedSplit, workers: int) -> None:
    """Stop before training when storage failed us (training on whatever happened to arrive would change
    the data set silently) or when a worker would get no images."""
    transient = train.transient + val.transient
    if transient:
        path, error = transient[0]
        raise JobFailedError(f"{len(transient)} images could not be read after retries (first: {path}: {error}); "
                             "nothing was trained: if that is an access or credentials error, fix the access "
                             "(--storage-options, the node's role); if it is throttling, a timeout or a 5xx, "
                             "re-run the same command when the storage answers again")
    for name, split in (("training", train), ("validation", val)):
        if split.count < workers:
            raise UserError(f"only {split.count} readable {name} images for {workers} workers; every worker "
                            "needs at least one (add images, or lower --workers / --val-fraction)")


def _run_config(config: FinetuneConfig):
    from ray.train import CheckpointConfig, RunConfig

    kept = CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT)
    if not storage.is_url(config.output):
        os.makedirs(config.output, exist_ok=True)
        return RunConfig(name=RUN_NAME, storage_path=os.path.abspath(config.output), checkpoint_config=kept)
    import pyarrow.fs

    fs, root = storage.filesystem(config.output)
    return RunConfig(name=RUN_NAME, storage_path=root, checkpoint_config=kept,
                     storage_filesystem=pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)))


def _fit(config: FinetuneConfig, base: TrainingBase, files: LabeledFiles, size: int, identity: dict[str, Any],
         plan: ResumePlan | None, train: DecodedSplit, val: DecodedSplit, progress: Callable[[str], None]) -> str:
    """Train; return a local folder holding the last checkpoint (weights, best weights, state)."""
    from ray.train import ScalingConfig
    # Ray Train V2's trainer for a custom backend, at the path Ray documents (its Developer APIs page).
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from pipeline.finetune.backend import MultiWorkerTensorflowConfig
    from pipeline.progress_relay import relayed_progress
    from pipeline.finetune.worker import train_loop_per_worker
    from pipeline.finetune.worker_settings import WorkerSettings

    settings = WorkerSettings(
        base=base.spec.name, start_from=base.model, keep_head=base.keeps_head(files.class_names),
        storage_options=config.storage_options, image_size=size, num_classes=len(files.class_names),
        fine_tune_epochs=config.fine_tune_epochs, unfreeze=config.unfreeze,
        batch_size=config.batch_size, lr=config.lr, fine_tune_lr_factor=config.fine_tune_lr_factor,
        lr_schedule=config.lr_schedule, dropout=config.dropout, augment=tuple(config.augment),
        cache_features=config.cache_features, cpus_per_worker=config.cpus_per_worker,
        monitor=config.best_by, patience=config.patience, seed=config.seed,
        shuffle_buffer=config.shuffle_buffer, identity=identity, recorded_settings=recorded_settings(config),
        stage1_end=plan.stage1_end if plan else config.epochs,
        resume_changes=plan.changes if plan else {},
        # Ray Train gives each worker an equal shard: count // workers rows
        steps_per_epoch=max(1, math.ceil(train.count // config.workers / config.batch_size)),
    )
    train_order = train.in_epoch_order(config.seed)
    progress(f"training with {plural(config.workers, 'Ray Train worker')}; checkpoints in "
             f"{storage.join(config.output, RUN_NAME)}")
    threading.Thread(target=_import_keras, name="import-keras-for-export", daemon=True).start()
    try:
        with relayed_progress(progress) as relay, controller_checks_often():
            trainer = DataParallelTrainer(
                train_loop_per_worker,
                train_loop_config={"settings": settings, "progress_relay": relay},  # Ray Train wants a dict
                backend_config=MultiWorkerTensorflowConfig(),
                scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu,
                                             resources_per_worker={"CPU": config.cpus_per_worker,
                                                                   **({"GPU": 1} if config.use_gpu else {})}),
                run_config=_run_config(config),
                datasets={"train": train_order, "val": val.dataset},
            )
            result = trainer.fit()
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - report, do not dump a Ray traceback on the user
        print(f"fine-tuning failed: {type(err).__name__}: {err}", file=sys.stderr)
        hint = "" if config.verbose else (" (re-run with --verbose to see the workers' own output; Ray's logs are "
                                          "under /tmp/ray/session_latest/logs on each node)")
        raise JobFailedError(f"fine-tuning failed ({type(err).__name__}){hint}; every finished epoch is "
                             f"checkpointed in OUTPUT: once the cause is fixed, re-run with --resume to "
                             f"continue") from err
    if result.checkpoint is None:
        raise JobFailedError("training finished without a checkpoint")
    return result.checkpoint.to_directory()


# Ray Train's controller looks at its workers every 2 s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), and only a look
# notices that they finished: a run sat idle up to 2 s after its last epoch (1-epoch runs on 2 cores, 3 each:
# median 27.6 s, 26.6 s looking every 0.5 s). A look is one small actor call per worker, and a worker that
# misses one is only declared dead after 10 minutes (RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S).
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_SECONDS = "0.5"


@contextlib.contextmanager
def controller_checks_often() -> Iterator[None]:
    """Ray Train's health check interval for the controller this process starts; a value the user set wins.

    Ray Train hands this variable from the driver's environment to its controller actor, on any cluster.
    """
    if HEALTH_CHECK_ENV in os.environ:
        yield
        return
    os.environ[HEALTH_CHECK_ENV] = HEALTH_CHECK_SECONDS
    try:
        yield
    finally:
        os.environ.pop(HEALTH_CHECK_ENV, None)


def _import_keras() -> None:
    """The export needs Keras in this process: import it (4-6 s) while the workers train, not after."""
    try:
        import keras  # noqa: F401
    except Exception:  # noqa: BLE001 - the export imports it again and reports a real failure there
        pass


def export(config: FinetuneConfig, base: TrainingBase, files: LabeledFiles, size: int, weights: list[np.ndarray],
           epoch: int, training: dict[str, Any] | None = None) -> None:
    """Build the plain classifier here, set the chosen epoch's weights, and save the artifact into OUTPUT."""
    from pipeline.finetune.model import build_classifier
    from pipeline.models.artifact import ArtifactMeta, save_artifact

    model = build_classifier(base.spec.name, size, len(files.class_names), weights=None, dropout=config.dropout,
                             inference_base=False)
    model.set_weights(weights)
    save_artifact(model, config.output, ArtifactMeta(base.spec.name, size, list(files.class_names),
                                                     epoch=epoch, resize=config.resize, training=training))
