"""The fine-tuning job: a registry base + new head trained data-parallel with Ray Train, exported for labeling.

Driver side: check the input (before any Ray work), decode the images once with
Ray Data, run ``TensorflowTrainer`` (the loop is in ``pipeline.finetune_worker``),
then write ``history.csv``, ``curves.png`` and the artifact into OUTPUT.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline import storage
from pipeline.errors import JobFailedError, UserError
from pipeline.finetune_data import DecodedSplit, LabeledFiles, decode_split, list_training_files
from pipeline.models.registry import DEFAULT_MODEL, get_spec

RUN_NAME = "checkpoints"  # Ray Train's run folder inside OUTPUT: one subfolder per epoch checkpoint
CHECKPOINTS_KEPT = 2
FINE_TUNE_LR_FACTOR = 0.1  # stage 2 learning rate = --lr x this


@dataclass
class FinetuneConfig:
    data: str  # class-per-subfolder training images (local or fsspec URL)
    output: str  # checkpoints, history, curves and the exported model go here
    base: str = DEFAULT_MODEL  # registry name of the pretrained base
    workers: int = 2  # Ray Train workers (data-parallel replicas)
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = 1.0  # CPUs Ray reserves for each worker
    epochs: int = 5  # stage 1: head only, base frozen
    fine_tune_epochs: int = 0  # stage 2: top of the base unfrozen
    unfreeze: int | None = 20  # base layers unfrozen in stage 2 (None: all); BatchNorm stays frozen
    batch_size: int = 32  # images per worker per step; the global batch is this x workers
    lr: float = 1e-3  # Adam learning rate of stage 1 (stage 2 uses a tenth)
    val_fraction: float = 0.2  # stratified hold-out per class when no --val folder
    val: str | None = None  # separate validation folder with the same class subfolders
    image_size: int | None = None  # train at this square size (default: the base's native size)
    augment: bool = True  # random flip/rotation/zoom on training batches
    cache_features: bool = False  # frozen base + no augmentation: compute base features once, train the head
    resume: bool = False  # continue from the last checkpoint in OUTPUT
    address: str | None = None  # Ray cluster address; None starts a local Ray here
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for DATA/OUTPUT


@dataclass
class FinetuneSummary:
    classes: list[str]
    train_images: int  # images decoded for training (after skipping corrupt ones)
    val_images: int
    skipped: list[tuple[str, str]]  # (path, error) of images that could not be decoded
    history: list[dict[str, Any]]
    workers: int
    seconds: float = 0.0

    @property
    def best(self) -> dict[str, Any]:
        return max(self.history, key=lambda row: row["val_accuracy"])

    @property
    def images_per_second(self) -> float:
        """Training throughput of all workers together (images through a train step per second)."""
        seconds = sum(row["train_seconds"] for row in self.history)
        return sum(row["train_images"] for row in self.history) / seconds if seconds else 0.0

    def line(self, output: str) -> str:
        best = self.best
        return (f"fine-tuned {len(self.classes)} classes on {self.train_images} images with {self.workers} "
                f"worker(s): best val accuracy {best['val_accuracy']:.4f} (epoch {best['epoch']}), "
                f"{len(self.history)} epochs, {self.seconds:.1f} s, {self.images_per_second:.1f} images/s, "
                f"{len(self.skipped)} unreadable image(s) skipped; model in {output}")


def run_finetune(config: FinetuneConfig, progress: Callable[[str], None] = lambda s: None) -> FinetuneSummary:
    """Run the job; UserError (before Ray starts, where possible) for anything the user must fix."""
    started = time.monotonic()
    storage.set_storage_options(config.storage_options)
    spec = get_spec(config.base)
    size = config.image_size or spec.input_size
    check_settings(config)
    files = list_training_files(config.data, config.val, config.val_fraction)
    check_output(config.output, config.resume)
    progress(f"{len(files.class_names)} classes {files.class_names[:10]}{' ...' if len(files.class_names) > 10 else ''}: "
             f"{len(files.train)} training and {len(files.val)} validation images, {size}x{size}, "
             f"{config.workers} worker(s)")
    import ray

    from pipeline.ray_session import ray_session

    if config.address is None and not os.environ.get("RAY_ADDRESS") and not ray.is_initialized():
        check_local_cpus(config)  # before paying for a Ray start (not inside a Ray job: it joins the cluster)
    with ray_session(config.address, verbose=True):  # the workers' [finetune] lines are the progress
        check_cluster_resources(config, ray.cluster_resources, progress=progress)
        train, val = (decode_split(items, size, config.batch_size, config.storage_options)
                      for items in (files.train, files.val))
        summary = FinetuneSummary(files.class_names, train.count, val.count, train.failed + val.failed, [],
                                  config.workers)
        for path, error in summary.skipped[:5]:
            progress(f"skipped {path}: {error}")
        check_decoded(train, val, config.workers)
        directory = _fit(config, files, size, train, val, progress)
    from pipeline.finetune_worker import read_state

    try:
        summary.history = read_state(directory)["history"]
        export(config, files, size, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # a local copy of the last checkpoint
    from pipeline.training_curves import plot_curves, write_history

    write_history(summary.history, config.output)
    plot_curves(summary.history, config.output, f"{spec.name} fine-tuned on {config.data}")
    summary.seconds = time.monotonic() - started
    return summary


def check_settings(config: FinetuneConfig) -> None:
    if config.workers < 1:
        raise UserError("--workers must be at least 1")
    if not 0 < config.val_fraction < 1 and config.val is None:
        raise UserError(f"--val-fraction {config.val_fraction} should be between 0 and 1")
    if config.image_size is not None and config.image_size < 32:
        raise UserError(f"--image-size {config.image_size} is too small; use 32 or more")
    if config.cache_features and (config.augment or config.fine_tune_epochs):
        raise UserError("--cache-features needs a base that never changes and images that never change: "
                        "add --no-augment and leave --fine-tune-epochs at 0")
    if config.epochs < 1:
        raise UserError("--epochs must be at least 1 (the new head is trained first)")


def check_output(output: str, resume: bool) -> None:
    if resume:
        return
    if storage.exists(storage.join(output, RUN_NAME)):
        raise UserError(f"OUTPUT '{output}' already holds a fine-tuning run; pass --resume to continue it, "
                        "or choose another OUTPUT")


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


def _fit(config: FinetuneConfig, files: LabeledFiles, size: int, train: DecodedSplit, val: DecodedSplit,
         progress: Callable[[str], None]) -> str:
    """Train; return a local folder holding the last checkpoint (weights + state)."""
    from ray.train import ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from pipeline.finetune_worker import train_loop_per_worker

    loop_config = {
        "base": config.base, "image_size": size, "num_classes": len(files.class_names),
        "epochs": config.epochs, "fine_tune_epochs": config.fine_tune_epochs, "unfreeze": config.unfreeze,
        "batch_size": config.batch_size, "lr": config.lr, "fine_tune_lr_factor": FINE_TUNE_LR_FACTOR,
        "augment": config.augment, "cache_features": config.cache_features,
        "cpus_per_worker": config.cpus_per_worker,
    }
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": config.cpus_per_worker,
                                                           **({"GPU": 1} if config.use_gpu else {})}),
        run_config=_run_config(config),
        datasets={"train": train.dataset, "val": val.dataset},
    )
    progress(f"training with {config.workers} Ray Train worker(s); checkpoints in "
             f"{storage.join(config.output, RUN_NAME)}")
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - report, do not dump a Ray traceback on the user
        print(f"fine-tuning failed: {type(err).__name__}: {err}", file=sys.stderr)
        raise JobFailedError(f"fine-tuning failed ({type(err).__name__}); the last finished epoch is "
                             f"checkpointed in OUTPUT: re-run with --resume to continue") from err
    if result.checkpoint is None:
        raise JobFailedError("training finished without a checkpoint")
    return result.checkpoint.to_directory()


def export(config: FinetuneConfig, files: LabeledFiles, size: int, checkpoint_dir: str) -> None:
    """Rebuild the classifier here, load the trained weights, and save the artifact into OUTPUT."""
    from pipeline.finetune_model import build_classifier
    from pipeline.finetune_worker import WEIGHTS_FILE
    from pipeline.models.artifact import ArtifactMeta, save_artifact

    model = build_classifier(config.base, size, len(files.class_names), weights=None)
    model.load_weights(os.path.join(checkpoint_dir, WEIGHTS_FILE))
    save_artifact(model, config.output, ArtifactMeta(get_spec(config.base).name, size, list(files.class_names)))
