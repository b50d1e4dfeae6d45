"""What each Ray Train worker runs: a custom data-parallel training loop under MultiWorkerMirroredStrategy.

Keras 3 ``model.fit`` fails under MultiWorkerMirroredStrategy with 2+ workers, so
each step is ``strategy.run`` inside a ``tf.function``. Every worker reads its own
shard of the data; the loss is summed per example and divided by the GLOBAL batch
(per-worker batch x workers), and the optimizer all-reduces (sums) the gradients,
so one step equals one step of single-process training on the global batch.

Every epoch's checkpoint holds the current weights and Adam state (to resume), the
weights of the best epoch so far (to export) and its validation confusion matrix.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from typing import Any

import numpy as np

from pipeline.plural import plural

WEIGHTS_FILE = "model.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
BEST_WEIGHTS_FILE = "best_weights.npz"  # the weights of state["best"]["epoch"], in model.weights order
BEST_CONFUSION_FILE = "best_confusion.npy"  # [true class, predicted class] counts on validation at that epoch
STATE_FILE = "state.json"
ITERATIONS_KEY = "iterations"  # the optimizer's step counter in OPTIMIZER_FILE (drives the LR schedule)


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


def learning_rate_schedule(peak: float, stage_steps: int, warmup_steps: int, kind: str):
    """``cosine``: linear warmup to ``peak``, then cosine decay to 5% of it at the stage's last step."""
    import keras

    if kind == "constant":
        return peak

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            import tensorflow as tf

            step = tf.cast(step, tf.float32)
            warm = tf.minimum(1.0, (step + 1.0) / float(max(1, warmup_steps)))
            progress = tf.clip_by_value((step - warmup_steps) / float(max(1, stage_steps - warmup_steps)), 0.0, 1.0)
            cosine = 0.05 + 0.95 * 0.5 * (1.0 + tf.cos(math.pi * progress))
            return peak * warm * tf.where(step < warmup_steps, 1.0, cosine)

        def get_config(self):
            return {"peak": peak, "stage_steps": stage_steps, "warmup_steps": warmup_steps}

    return WarmupCosine()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train

    from pipeline.tensorflow_env import import_tensorflow_for_worker

    tf = import_tensorflow_for_worker()
    import keras

    from pipeline.finetune.model import augmentation_layers, build_classifier, unfreeze_top
    from pipeline.models.registry import get_spec

    _limit_threads(config["cpus_per_worker"])
    # Reads TF_CONFIG, which pipeline.finetune.backend wrote for this worker.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    context = ray.train.get_context()
    rank = context.get_world_rank()

    def log(message: str) -> None:
        _log(rank, message, config.get("progress_relay"))

    size, batch_size, num_classes = config["image_size"], config["batch_size"], config["num_classes"]
    preprocess = get_spec(config["base"]).preprocess_input
    monitor, patience = config["monitor"], config["patience"]

    keras.utils.set_random_seed(config["seed"])  # the same new head on every worker
    with strategy.scope():
        model = build_classifier(config["base"], size, num_classes, dropout=config["dropout"],
                                 weights=None if config["start_from"] else "imagenet")
    checkpoint = ray.train.get_checkpoint()
    if config["start_from"] and checkpoint is None:
        _start_from(model, config["start_from"], config["keep_head"], config["storage_options"])
    keras.utils.set_random_seed(config["seed"] * 1000 + rank + 1)  # own dropout / augmentation draws
    augment = augmentation_layers(tuple(config["augment"]))

    state: dict[str, Any] = {"epoch": 0, "stage": 1, "history": [], "best": None, "stale": 0,
                             "stage1_end": config["stage1_end"], "finished": False, "identity": config["identity"]}
    saved_optimizer: dict[str, np.ndarray] | None = None
    best_weights: list[np.ndarray] | None = None
    best_confusion: np.ndarray | None = None
    resumed: dict[str, Any] | None = None  # what was restored, from the live variables: kept in the state
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = read_state(directory)
            model.load_weights(os.path.join(directory, WEIGHTS_FILE))
            with np.load(os.path.join(directory, OPTIMIZER_FILE)) as data:
                saved_optimizer = {key: data[key] for key in data.files}
            best_weights = read_best_weights(directory)
            best_confusion = np.load(os.path.join(directory, BEST_CONFUSION_FILE))
        state["stage1_end"] = config["stage1_end"]  # the driver's plan: a longer stage 1 continues
        resumed = {"after_epoch": state["epoch"], "weights_checksum": weights_checksum(model.get_weights()),
                   "optimizer_iterations": None, "changed": config["resume_changes"]}
        log(f"resuming after epoch {state['epoch']} (stage {state['stage']}): weights checksum "
            f"{resumed['weights_checksum']:.6f}")

    label_spec = tf.TensorSpec([None], tf.int32)
    if config["cache_features"]:
        # Frozen base, no augmentation: its pooled features never change, so compute them once
        # and train only dropout + dense on them. The weights are the model's own head layers.
        input_spec = tf.TensorSpec([None, model.get_layer("head_pool").output.shape[-1]], tf.float32)
        dropout, classes = model.get_layer("head_dropout"), model.get_layer("head_classes")

        def forward(features, training):
            return classes(dropout(features, training=training))
    else:
        input_spec = tf.TensorSpec([None, size, size, 3], tf.uint8)

        def forward(images, training):
            x = tf.cast(images, tf.float32)
            if training and augment is not None:
                x = augment(x, training=True)
            return model(preprocess(x), training=training)

    def make_train_step(optimizer):
        variables = model.trainable_variables

        def replica_step(inputs, labels):
            with tf.GradientTape() as tape:
                probabilities = forward(inputs, training=True)
                per_example = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
                global_batch = tf.shape(labels)[0] * strategy.num_replicas_in_sync
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            gradients = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(gradients, variables))  # all-reduces (sums) across workers
            return _sums(per_example, probabilities, labels)

        @tf.function(input_signature=[input_spec, label_spec])
        def train_step(inputs, labels):
            return strategy.run(replica_step, args=(inputs, labels))

        return train_step

    @tf.function(input_signature=[input_spec, label_spec])
    def val_step(inputs, labels):
        def replica_step(inputs, labels):
            probabilities = forward(inputs, training=False)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
            predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            confusion = tf.math.confusion_matrix(labels, predicted, num_classes=num_classes, dtype=tf.float32)
            return (*_sums(per_example, probabilities, labels), tf.reshape(confusion, [-1]))

        return strategy.run(replica_step, args=(inputs, labels))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float64)])
    def all_reduce_sum(values):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(values,)), axis=None)

    def shard_batches(shard, shuffle_seed: int | None):
        buffer = config["shuffle_buffer"] if shuffle_seed is not None else None
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=False,
                                        local_shuffle_buffer_size=buffer, local_shuffle_seed=shuffle_seed):
            yield batch["image"], batch["label"].astype(np.int32)

    def run_epoch(batches, step, width: int) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        totals = np.zeros(width)
        for inputs, labels in batches:
            totals += np.concatenate([np.ravel(np.asarray(t, np.float64)) for t in step(inputs, labels)])
        seconds = time.perf_counter() - started
        return all_reduce_sum(totals).numpy(), seconds

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    if config["cache_features"]:
        started = time.perf_counter()
        features = keras.Model(model.input, model.get_layer("head_pool").output)
        extract = tf.function(lambda images: features(preprocess(tf.cast(images, tf.float32)), training=False))
        cached = {name: _cache(shard_batches(shard, None), extract)
                  for name, shard in (("train", train_shard), ("val", val_shard))}
        log(f"cached base features of {len(cached['train'][1])} training images per worker "
            f"in {time.perf_counter() - started:.1f} s")

    def epoch_batches(name: str, shuffle_seed: int | None):
        if not config["cache_features"]:
            return shard_batches(train_shard if name == "train" else val_shard, shuffle_seed)
        inputs, labels = cached[name]
        order = (np.random.default_rng(shuffle_seed).permutation(len(labels)) if shuffle_seed is not None
                 else np.arange(len(labels)))
        return ((inputs[order[i:i + batch_size]], labels[order[i:i + batch_size]])
                for i in range(0, len(labels), batch_size))

    steps_per_epoch = config["steps_per_epoch"]
    train_step, stage, optimizer = None, 0, None
    epoch = state["epoch"]
    while not state["finished"] and epoch < state["stage1_end"] + config["fine_tune_epochs"]:
        epoch += 1
        wanted_stage = 1 if epoch <= state["stage1_end"] else 2
        if wanted_stage != stage:
            stage = wanted_stage
            stage_epochs = state["stage1_end"] if stage == 1 else config["fine_tune_epochs"]
            peak = config["lr"] if stage == 1 else config["lr"] * config["fine_tune_lr_factor"]
            schedule = learning_rate_schedule(peak, stage_epochs * steps_per_epoch,
                                              min(steps_per_epoch, max(1, stage_epochs * steps_per_epoch // 10)),
                                              config["lr_schedule"])
            fresh_stage = saved_optimizer is None or state["stage"] != stage
            if stage == 2 and fresh_stage and best_weights is not None:
                model.set_weights(best_weights)  # fine-tune the best head, not the last one
            with strategy.scope():
                if stage == 2:
                    unfreeze_top(model, config["unfreeze"])
                optimizer = keras.optimizers.Adam(schedule)
                optimizer.build(model.trainable_variables)
            if not fresh_stage and not _restore_optimizer(optimizer, saved_optimizer):
                fresh_stage = True
                log("the checkpoint's optimizer state does not fit this stage's variables: Adam starts afresh")
            elif not fresh_stage:
                log(f"optimizer restored at iteration {int(optimizer.iterations.numpy())}")
            if resumed is not None:
                resumed["optimizer_iterations"] = None if fresh_stage else int(optimizer.iterations.numpy())
                state["resumes"] = state.get("resumes", []) + [resumed]
                resumed = None
            saved_optimizer = None
            state["stale"] = 0 if fresh_stage else state["stale"]
            train_step = make_train_step(optimizer)
            log(f"stage {stage}: {len(model.trainable_variables)} trainable tensors, peak lr {peak:g} "
                f"({config['lr_schedule']})")
        shuffle_seed = (config["seed"] * 1_000_003 + epoch * 1009 + rank) % 2**31
        (loss, correct, seen), train_seconds = run_epoch(epoch_batches("train", shuffle_seed), train_step, 3)
        reduced, _ = run_epoch(epoch_batches("val", None), val_step, 3 + num_classes ** 2)
        val_loss, val_correct, val_seen = reduced[:3]
        metrics = {
            "epoch": epoch, "stage": stage,
            "loss": loss / max(seen, 1), "accuracy": correct / max(seen, 1),
            "val_loss": val_loss / max(val_seen, 1), "val_accuracy": val_correct / max(val_seen, 1),
            "train_images": int(seen), "val_images": int(val_seen), "train_seconds": train_seconds,
            "images_per_second": seen / train_seconds if train_seconds else 0.0,
            "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
        }
        if is_better(metrics, state["best"], monitor):
            state["best"] = {"epoch": epoch, "val_accuracy": metrics["val_accuracy"], "val_loss": metrics["val_loss"]}
            best_weights = [np.array(w) for w in model.get_weights()]
            best_confusion = reduced[3:].reshape(num_classes, num_classes)
            state["stale"] = 0
        else:
            state["stale"] += 1
        state["epoch"], state["stage"] = epoch, stage
        state["settings"] = config["settings"]  # what the next --resume compares (pipeline.finetune.resume)
        state["history"] = state["history"] + [metrics]
        if patience and state["stale"] >= patience:
            if stage == 1 and config["fine_tune_epochs"]:
                log(f"no better {monitor} for {plural(patience, 'epoch')}: fine-tuning starts after epoch {epoch}")
                state["stage1_end"] = epoch
            else:
                log(f"no better {monitor} for {plural(patience, 'epoch')}: stopping after epoch {epoch}")
                state["finished"] = True
        log("epoch {epoch}: loss {loss:.4f} accuracy {accuracy:.4f} val_loss {val_loss:.4f} "
            "val_accuracy {val_accuracy:.4f} lr {learning_rate:.2e} ({images_per_second:.1f} images/s)"
            .format(**metrics) + f"; best epoch {state['best']['epoch']}")
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if rank == 0:  # the variables are mirrored: one copy is the checkpoint
                model.save_weights(os.path.join(directory, WEIGHTS_FILE))
                np.savez(os.path.join(directory, OPTIMIZER_FILE), **optimizer_arrays(optimizer))
                np.savez(os.path.join(directory, BEST_WEIGHTS_FILE),
                         **{f"w{i:05d}": w for i, w in enumerate(best_weights)})
                np.save(os.path.join(directory, BEST_CONFUSION_FILE), best_confusion)
                with open(os.path.join(directory, STATE_FILE), "w", encoding="utf-8") as f:
                    json.dump(state, f, indent=1)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{epoch:04d}")


def optimizer_arrays(optimizer) -> dict[str, np.ndarray]:
    """Every optimizer variable by position, plus its step counter under ``ITERATIONS_KEY``."""
    arrays = {f"v{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    arrays[ITERATIONS_KEY] = np.asarray(optimizer.iterations.numpy())
    return arrays


def weights_checksum(weights: list[np.ndarray]) -> float:
    """One number that changes with any weight: logged at resume and compared by the tests."""
    return float(sum(np.sum(np.asarray(w, np.float64) * (i + 1)) for i, w in enumerate(weights)))


def _sums(per_example, probabilities, labels):
    import tensorflow as tf

    predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))
    return tf.reduce_sum(per_example), correct, tf.cast(tf.shape(labels)[0], tf.float32)


def _cache(batches, extract) -> tuple[np.ndarray, np.ndarray]:
    """All (features, labels) of one shard, in memory (pooled features are small: e.g. 1280 floats)."""
    features, labels = [], []
    for images, batch_labels in batches:
        features.append(extract(images).numpy())
        labels.append(batch_labels)
    return np.concatenate(features), np.concatenate(labels)


def _start_from(model, location: str, keep_head: bool, storage_options: dict[str, Any]) -> None:
    """Set ``model``'s weights from the fine-tuned model at ``location`` (same backbone and layer order):
    all of them when the classes are the same, else all but the new head's kernel and bias."""
    from pipeline import storage
    from pipeline.models.artifact import load_artifact_model

    if storage_options:
        storage.set_storage_options(storage_options)
    start, current = load_artifact_model(location).get_weights(), model.get_weights()
    model.set_weights(start if keep_head else start[:-2] + current[-2:])


def _restore_optimizer(optimizer, saved: dict[str, np.ndarray]) -> bool:
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


def _log(rank: int, message: str, relay=None) -> None:
    """Rank 0's progress: to the driver's console through the relay (or stdout without one)."""
    from pipeline.progress_relay import say  # imports Ray: the driver reads checkpoints with this module without it

    if rank == 0:
        say(relay, f"[finetune] {message}")
