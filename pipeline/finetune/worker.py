"""What each Ray Train worker runs: a custom data-parallel training loop under MultiWorkerMirroredStrategy.

Keras 3 ``model.fit`` fails under MultiWorkerMirroredStrategy with 2+ workers, so
each step is ``strategy.run`` inside a ``tf.function`` (``pipeline.finetune.steps``).
Every worker reads its own shard of the data, and one step equals one step of
single-process training on the global batch.

Every epoch's checkpoint holds the current weights and Adam state (to resume), the
weights of the best epoch so far (to export) and its validation confusion matrix.

``train_loop_per_worker`` sets up (model, checkpoint, compiled steps, batches), then runs
the epochs: ``start_stage`` when a stage begins, then ``train_and_validate``,
``record_epoch`` and ``checkpoint_and_report``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from pipeline.finetune.steps import CompiledSteps, FeatureForward, ImageForward, Step
from pipeline.plural import plural

if TYPE_CHECKING:
    import keras
    import ray.actor
    import ray.data
    import ray.train
    import tensorflow as tf

    from pipeline.finetune.worker_settings import WorkerSettings

WEIGHTS_FILE = "model.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
BEST_WEIGHTS_FILE = "best_weights.npz"  # the weights of state["best"]["epoch"], in model.weights order
BEST_CONFUSION_FILE = "best_confusion.npy"  # [true class, predicted class] counts on validation at that epoch
STATE_FILE = "state.json"
ITERATIONS_KEY = "iterations"  # the optimizer's step counter in OPTIMIZER_FILE (drives the LR schedule)

Log = Callable[[str], None]  # a progress line: rank 0's reach the driver's console
Batches = Iterable[tuple[np.ndarray, np.ndarray]]  # (inputs, int32 labels) per batch


def read_state(directory: str) -> dict[str, Any]:
    with open(os.path.join(directory, STATE_FILE), encoding="utf-8") as f:
        return json.load(f)


def read_best_weights(directory: str) -> list[np.ndarray]:
    with np.load(os.path.join(directory, BEST_WEIGHTS_FILE)) as data:
        return [data[key] for key in sorted(data.files)]


def is_better(metrics: dict[str, float], best: dict[str, Any] | None, monitor: str) -> bool:
    """Higher val_accuracy or lower val_loss than the best so far (ties keep the earlier epoch)."""
    if best is None:
        return True
    if monitor == "val_loss":
        return metrics["val_loss"] < best["val_loss"]
    return metrics["val_accuracy"] > best["val_accuracy"]


def learning_rate_schedule(peak: float, stage_steps: int, warmup_steps: int,
                           kind: str) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """``cosine``: linear warmup to ``peak``, then cosine decay to 5% of it at the stage's last step."""
    import keras

    if kind == "constant":
        return peak

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step: Any) -> tf.Tensor:
            import tensorflow as tf

            step = tf.cast(step, tf.float32)
            warm = tf.minimum(1.0, (step + 1.0) / float(max(1, warmup_steps)))
            progress = tf.clip_by_value((step - warmup_steps) / float(max(1, stage_steps - warmup_steps)), 0.0, 1.0)
            cosine = 0.05 + 0.95 * 0.5 * (1.0 + tf.cos(math.pi * progress))
            return peak * warm * tf.where(step < warmup_steps, 1.0, cosine)

        def get_config(self) -> dict[str, Any]:
            return {"peak": peak, "stage_steps": stage_steps, "warmup_steps": warmup_steps}

    return WarmupCosine()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point on every worker. Ray Train hands the loop a dict: ``{"settings": WorkerSettings,
    "progress_relay": relay}``.

    The set-up keeps one order: the first seed makes the new head the same on every worker; the second, after
    the model's weights are set, gives each worker its own dropout and augmentation draws.
    """
    import ray.train

    from pipeline.tensorflow_env import import_tensorflow_for_worker

    tf = import_tensorflow_for_worker()
    import keras

    from pipeline.finetune.model import augmentation_layers, build_classifier
    from pipeline.models.registry import get_spec

    settings: WorkerSettings = config["settings"]
    _limit_threads(settings.cpus_per_worker)
    # Reads TF_CONFIG, which pipeline.finetune.backend wrote for this worker.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    rank = ray.train.get_context().get_world_rank()
    log: Log = functools.partial(_log, rank, relay=config.get("progress_relay"))
    preprocess = get_spec(settings.base).preprocess_input

    keras.utils.set_random_seed(settings.seed)  # the same new head on every worker
    with strategy.scope():
        model = build_classifier(settings.base, settings.image_size, settings.num_classes, dropout=settings.dropout,
                                 weights=None if settings.start_from else "imagenet")
    checkpoint = ray.train.get_checkpoint()
    if settings.start_from and checkpoint is None:
        _start_from(model, settings.start_from, settings.keep_head, settings.storage_options)
    keras.utils.set_random_seed(settings.seed * 1000 + rank + 1)  # own dropout / augmentation draws
    augment = augmentation_layers(settings.augment)
    progress = load_progress(checkpoint, model, settings, log)

    forward = (FeatureForward(model) if settings.cache_features
               else ImageForward(model, preprocess, augment, settings.image_size))
    steps = CompiledSteps(strategy, model, forward, settings.num_classes)
    batches = EpochBatches(settings, ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val"))
    if settings.cache_features:
        batches.cache_base_features(model, preprocess, log)

    stage, optimizer, train_step = 0, None, None
    epoch = progress.state["epoch"]
    while not progress.state["finished"] and epoch < progress.state["stage1_end"] + settings.fine_tune_epochs:
        epoch += 1
        wanted_stage = 1 if epoch <= progress.state["stage1_end"] else 2
        if wanted_stage != stage:
            stage = wanted_stage
            optimizer, train_step = start_stage(stage, settings, model, strategy, steps, progress, log)
        metrics, confusion = train_and_validate(epoch, stage, settings, rank, batches, steps, train_step, optimizer)
        record_epoch(metrics, confusion, model, settings, progress, log)
        checkpoint_and_report(metrics, model, optimizer, progress, rank)


@dataclass
class RunProgress:
    """What one epoch hands the next, and a checkpoint keeps besides the live weights and Adam state."""

    state: dict[str, Any]  # STATE_FILE: epochs done, stage, history, best epoch, stale epochs, the plan, resumes
    saved_optimizer: dict[str, np.ndarray] | None = None  # the checkpoint's Adam arrays, until a stage starts
    best_weights: list[np.ndarray] | None = None  # the best epoch's weights: exported, and where stage 2 starts
    best_confusion: np.ndarray | None = None  # the best epoch's validation confusion matrix, for the report
    resumed: dict[str, Any] | None = None  # what was restored, from the live variables: kept in the state


def load_progress(checkpoint: ray.train.Checkpoint | None, model: keras.Model, settings: WorkerSettings,
                  log: Log) -> RunProgress:
    """A new run's empty state, or the checkpoint's, whose weights go into ``model`` now. Adam's arrays wait
    for ``start_stage``: each stage builds its own optimizer, and only the checkpoint's stage takes them."""
    state: dict[str, Any] = {"epoch": 0, "stage": 1, "history": [], "best": None, "stale": 0,
                             "stage1_end": settings.stage1_end, "finished": False, "identity": settings.identity}
    if checkpoint is None:
        return RunProgress(state)
    with checkpoint.as_directory() as directory:
        state = read_state(directory)
        model.load_weights(os.path.join(directory, WEIGHTS_FILE))
        with np.load(os.path.join(directory, OPTIMIZER_FILE)) as data:
            saved_optimizer = {key: data[key] for key in data.files}
        best_weights = read_best_weights(directory)
        best_confusion = np.load(os.path.join(directory, BEST_CONFUSION_FILE))
    state["stage1_end"] = settings.stage1_end  # the driver's plan: a longer stage 1 continues
    resumed = {"after_epoch": state["epoch"], "weights_checksum": weights_checksum(model.get_weights()),
               "optimizer_iterations": None, "changed": settings.resume_changes}
    log(f"resuming after epoch {state['epoch']} (stage {state['stage']}): weights checksum "
        f"{resumed['weights_checksum']:.6f}")
    return RunProgress(state, saved_optimizer, best_weights, best_confusion, resumed)


class EpochBatches:
    """This worker's batches for an epoch: from its Ray Data shards, or from the base features cached from them
    (``cache_base_features``), in an order its shuffle seed decides."""

    def __init__(self, settings: WorkerSettings, train_shard: ray.data.DataIterator,
                 val_shard: ray.data.DataIterator) -> None:
        self.shards = {"train": train_shard, "val": val_shard}
        self.batch_size, self.shuffle_buffer = settings.batch_size, settings.shuffle_buffer
        self.cached: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # split -> (features, labels)

    def cache_base_features(self, model: keras.Model, preprocess: Callable[[tf.Tensor], tf.Tensor],
                            log: Log) -> None:
        """Read both shards once and keep the base's pooled features: every later epoch reads them instead."""
        import keras
        import tensorflow as tf

        started = time.perf_counter()
        features = keras.Model(model.input, model.get_layer("head_pool").output)
        extract = tf.function(lambda images: features(preprocess(tf.cast(images, tf.float32)), training=False))
        self.cached = {name: _cache(self.shard_batches(name, None), extract) for name in ("train", "val")}
        log(f"cached base features of {len(self.cached['train'][1])} training images per worker "
            f"in {time.perf_counter() - started:.1f} s")

    def shard_batches(self, name: str, shuffle_seed: int | None) -> Batches:
        """Batches of one shard; a shuffle seed also shuffles rows locally, in a buffer of ``shuffle_buffer``."""
        buffer = self.shuffle_buffer if shuffle_seed is not None else None
        for batch in self.shards[name].iter_batches(batch_size=self.batch_size, batch_format="numpy",
                                                    drop_last=False, local_shuffle_buffer_size=buffer,
                                                    local_shuffle_seed=shuffle_seed):
            yield batch["image"], batch["label"].astype(np.int32)

    def __call__(self, name: str, shuffle_seed: int | None) -> Batches:
        """The epoch's batches of split ``name`` ("train" or "val"); None as the seed keeps the stored order."""
        if self.cached is None:
            return self.shard_batches(name, shuffle_seed)
        inputs, labels = self.cached[name]
        order = (np.random.default_rng(shuffle_seed).permutation(len(labels)) if shuffle_seed is not None
                 else np.arange(len(labels)))
        return ((inputs[order[i:i + self.batch_size]], labels[order[i:i + self.batch_size]])
                for i in range(0, len(labels), self.batch_size))


def start_stage(stage: int, settings: WorkerSettings, model: keras.Model, strategy: tf.distribute.Strategy,
                steps: CompiledSteps, progress: RunProgress, log: Log) -> tuple[keras.optimizers.Optimizer, Step]:
    """A stage's own Adam, learning rate schedule and compiled train step; stage 2 also unfreezes the top of the
    base. The checkpoint's Adam state continues only in the stage it was saved in."""
    import keras

    from pipeline.finetune.model import unfreeze_top

    state, steps_per_epoch = progress.state, settings.steps_per_epoch
    stage_epochs = state["stage1_end"] if stage == 1 else settings.fine_tune_epochs
    peak = settings.lr if stage == 1 else settings.lr * settings.fine_tune_lr_factor
    schedule = learning_rate_schedule(peak, stage_epochs * steps_per_epoch,
                                      min(steps_per_epoch, max(1, stage_epochs * steps_per_epoch // 10)),
                                      settings.lr_schedule)
    fresh_stage = progress.saved_optimizer is None or state["stage"] != stage
    if stage == 2 and fresh_stage and progress.best_weights is not None:
        model.set_weights(progress.best_weights)  # fine-tune the best head, not the last one
    with strategy.scope():
        if stage == 2:
            unfreeze_top(model, settings.unfreeze)
        optimizer = keras.optimizers.Adam(schedule)
        optimizer.build(model.trainable_variables)
    if not fresh_stage and not _restore_optimizer(optimizer, progress.saved_optimizer):
        fresh_stage = True
        log("the checkpoint's optimizer state does not fit this stage's variables: Adam starts afresh")
    elif not fresh_stage:
        log(f"optimizer restored at iteration {int(optimizer.iterations.numpy())}")
    if progress.resumed is not None:
        progress.resumed["optimizer_iterations"] = None if fresh_stage else int(optimizer.iterations.numpy())
        state["resumes"] = state.get("resumes", []) + [progress.resumed]
        progress.resumed = None
    progress.saved_optimizer = None
    state["stale"] = 0 if fresh_stage else state["stale"]
    train_step = steps.train_step(optimizer)
    log(f"stage {stage}: {len(model.trainable_variables)} trainable tensors, peak lr {peak:g} "
        f"({settings.lr_schedule})")
    return optimizer, train_step


def train_and_validate(epoch: int, stage: int, settings: WorkerSettings, rank: int, batches: EpochBatches,
                       steps: CompiledSteps, train_step: Step,
                       optimizer: keras.optimizers.Optimizer) -> tuple[dict[str, Any], np.ndarray]:
    """One epoch: the metrics row (every worker's sums added up) and the validation confusion matrix. The
    shuffle seed differs per epoch and per worker, and is the same on a rerun."""
    import keras

    shuffle_seed = (settings.seed * 1_000_003 + epoch * 1009 + rank) % 2**31
    (loss, correct, seen), train_seconds = run_pass(batches("train", shuffle_seed), train_step, 3,
                                                    steps.all_reduce_sum)
    reduced, _ = run_pass(batches("val", None), steps.val_step, 3 + settings.num_classes ** 2, steps.all_reduce_sum)
    val_loss, val_correct, val_seen = reduced[:3]
    metrics = {
        "epoch": epoch, "stage": stage,
        "loss": loss / max(seen, 1), "accuracy": correct / max(seen, 1),
        "val_loss": val_loss / max(val_seen, 1), "val_accuracy": val_correct / max(val_seen, 1),
        "train_images": int(seen), "val_images": int(val_seen), "train_seconds": train_seconds,
        "images_per_second": seen / train_seconds if train_seconds else 0.0,
        "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
    }
    return metrics, reduced[3:].reshape(settings.num_classes, settings.num_classes)


def run_pass(batches: Batches, step: Step, width: int,
             all_reduce_sum: Callable[[np.ndarray], tf.Tensor]) -> tuple[np.ndarray, float]:
    """``step`` over every batch: its ``width`` sums added up here, then over all workers; and this worker's
    seconds in the loop (all-reduce excluded)."""
    started = time.perf_counter()
    totals = np.zeros(width)
    for inputs, labels in batches:
        totals += np.concatenate([np.ravel(np.asarray(t, np.float64)) for t in step(inputs, labels)])
    seconds = time.perf_counter() - started
    return all_reduce_sum(totals).numpy(), seconds


def record_epoch(metrics: dict[str, Any], confusion: np.ndarray, model: keras.Model, settings: WorkerSettings,
                 progress: RunProgress, log: Log) -> None:
    """The epoch into the state: a new best keeps its weights and confusion matrix; patience may end the stage
    (stage 1 then hands over to fine-tuning) or the run."""
    state, epoch, stage = progress.state, metrics["epoch"], metrics["stage"]
    monitor, patience = settings.monitor, settings.patience
    if is_better(metrics, state["best"], monitor):
        state["best"] = {"epoch": epoch, "val_accuracy": metrics["val_accuracy"], "val_loss": metrics["val_loss"]}
        progress.best_weights = [np.array(w) for w in model.get_weights()]
        progress.best_confusion = confusion
        state["stale"] = 0
    else:
        state["stale"] += 1
    state["epoch"], state["stage"] = epoch, stage
    state["settings"] = settings.recorded_settings  # what the next --resume compares (pipeline.finetune.resume)
    state["history"] = state["history"] + [metrics]
    last_epoch = state["stage1_end"] + settings.fine_tune_epochs  # the run ends after it anyway: not early
    if patience and state["stale"] >= patience and epoch < last_epoch:
        if stage == 1 and settings.fine_tune_epochs:
            log(f"no better {monitor} for {plural(patience, 'epoch')}: fine-tuning starts after epoch {epoch}")
            state["stage1_end"] = epoch
        else:
            log(f"no better {monitor} for {plural(patience, 'epoch')}: stopping after epoch {epoch}")
            state["finished"] = True
    log("epoch {epoch}: loss {loss:.4f} accuracy {accuracy:.4f} val_loss {val_loss:.4f} "
        "val_accuracy {val_accuracy:.4f} lr {learning_rate:.2e} ({images_per_second:.1f} images/s)"
        .format(**metrics) + f"; best epoch {state['best']['epoch']}")


def checkpoint_and_report(metrics: dict[str, Any], model: keras.Model, optimizer: keras.optimizers.Optimizer,
                          progress: RunProgress, rank: int) -> None:
    """Every worker reports the epoch (Ray Train waits for all of them); rank 0 alone writes the checkpoint."""
    import ray.train

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:  # the variables are mirrored: one copy is the checkpoint
            model.save_weights(os.path.join(directory, WEIGHTS_FILE))
            np.savez(os.path.join(directory, OPTIMIZER_FILE), **optimizer_arrays(optimizer))
            np.savez(os.path.join(directory, BEST_WEIGHTS_FILE),
                     **{f"w{i:05d}": w for i, w in enumerate(progress.best_weights)})
            np.save(os.path.join(directory, BEST_CONFUSION_FILE), progress.best_confusion)
            with open(os.path.join(directory, STATE_FILE), "w", encoding="utf-8") as f:
                json.dump(progress.state, f, indent=1)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{metrics['epoch']:04d}")


def optimizer_arrays(optimizer: keras.optimizers.Optimizer) -> dict[str, np.ndarray]:
    """Every optimizer variable by position, plus its step counter under ``ITERATIONS_KEY``."""
    arrays = {f"v{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    arrays[ITERATIONS_KEY] = np.asarray(optimizer.iterations.numpy())
    return arrays


def weights_checksum(weights: list[np.ndarray]) -> float:
    """One number that changes with any weight: logged at resume and compared by the tests."""
    return float(sum(np.sum(np.asarray(w, np.float64) * (i + 1)) for i, w in enumerate(weights)))


def _cache(batches: Batches, extract: Callable[[np.ndarray], tf.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """All (features, labels) of one shard, in memory (pooled features are small: e.g. 1280 floats)."""
    features, labels = [], []
    for images, batch_labels in batches:
        features.append(extract(images).numpy())
        labels.append(batch_labels)
    return np.concatenate(features), np.concatenate(labels)


def _start_from(model: keras.Model, location: str, keep_head: bool, storage_options: dict[str, Any]) -> None:
    """Set ``model``'s weights from the fine-tuned model at ``location`` (same backbone and layer order):
    all of them when the classes are the same, else all but the new head's kernel and bias."""
    from pipeline import storage
    from pipeline.models.artifact import load_artifact_model

    if storage_options:
        storage.set_storage_options(storage_options)
    start, current = load_artifact_model(location).get_weights(), model.get_weights()
    model.set_weights(start if keep_head else start[:-2] + current[-2:])


def _restore_optimizer(optimizer: keras.optimizers.Optimizer, saved: dict[str, np.ndarray]) -> bool:
    """Put the saved Adam state into ``optimizer``; False (nothing changed) when it is another stage's."""
    values = [saved[key] for key in sorted(saved) if key.startswith("v")]
    variables = optimizer.variables
    if len(values) != len(variables) or any(tuple(v.shape) != w.shape for v, w in zip(variables, values)):
        return False
    for variable, value in zip(variables, values):
        variable.assign(value)
    return True


def _limit_threads(cpus: float) -> None:
    import tensorflow as tf

    threads = max(1, int(cpus))
    try:  # only possible before TensorFlow's runtime starts in this process
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))
    except RuntimeError:
        pass


def _log(rank: int, message: str, relay: ray.actor.ActorHandle | None = None) -> None:
    """Rank 0's progress: to the driver's console through the relay (or stdout without one)."""
    from pipeline.progress_relay import say  # imports Ray: the driver reads checkpoints with this module without it

    if rank == 0:
        say(relay, f"[finetune] {message}")
