"""What each Ray Train worker runs: a custom data-parallel training loop under MultiWorkerMirroredStrategy.

Keras 3 ``model.fit`` fails under MultiWorkerMirroredStrategy with 2+ workers, so
each step is ``strategy.run`` inside a ``tf.function``. Every worker reads its own
shard of the data; the loss is summed per example and divided by the GLOBAL batch
(per-worker batch x workers), and the optimizer all-reduces (sums) the gradients,
so one step equals one step of single-process training on the global batch.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

import numpy as np

WEIGHTS_FILE = "model.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
STATE_FILE = "state.json"
SHUFFLE_BUFFER = 1024


def read_state(directory: str) -> dict[str, Any]:
    with open(os.path.join(directory, STATE_FILE), encoding="utf-8") as f:
        return json.load(f)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import keras
    import ray.train
    import tensorflow as tf

    from pipeline.finetune_model import augmentation_layers, build_classifier, unfreeze_top
    from pipeline.models.registry import get_spec

    _limit_threads(config["cpus_per_worker"])
    # Reads TF_CONFIG, which Ray Train's TensorflowConfig wrote for this worker.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    size, batch_size = config["image_size"], config["batch_size"]
    total_epochs = config["epochs"] + config["fine_tune_epochs"]
    preprocess = get_spec(config["base"]).preprocess_input

    with strategy.scope():
        model = build_classifier(config["base"], size, config["num_classes"])
    augment = augmentation_layers() if config["augment"] else None

    state: dict[str, Any] = {"epoch": 0, "stage": 1, "history": []}
    saved_optimizer: dict[str, np.ndarray] | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = read_state(directory)
            model.load_weights(os.path.join(directory, WEIGHTS_FILE))
            with np.load(os.path.join(directory, OPTIMIZER_FILE)) as data:
                saved_optimizer = {key: data[key] for key in data.files}
        _log(rank, f"resuming after epoch {state['epoch']} (stage {state['stage']})")

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
            return _sums(per_example, probabilities, labels)

        return strategy.run(replica_step, args=(inputs, labels))

    @tf.function(input_signature=[tf.TensorSpec([3], tf.float64)])
    def all_reduce_sum(values):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(values,)), axis=None)

    def shard_batches(shard, shuffle: bool):
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=False,
                                        local_shuffle_buffer_size=SHUFFLE_BUFFER if shuffle else None):
            yield batch["image"], batch["label"].astype(np.int32)

    def run_epoch(batches, step) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        totals = np.zeros(3)
        for inputs, labels in batches:
            totals += [float(t) for t in step(inputs, labels)]
        seconds = time.perf_counter() - started
        return all_reduce_sum(totals).numpy(), seconds

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    if config["cache_features"]:
        started = time.perf_counter()
        features = keras.Model(model.input, model.get_layer("head_pool").output)
        extract = tf.function(lambda images: features(preprocess(tf.cast(images, tf.float32)), training=False))
        cached = {name: _cache(shard_batches(shard, shuffle=False), extract)
                  for name, shard in (("train", train_shard), ("val", val_shard))}
        _log(rank, f"cached base features of {len(cached['train'][1])} training images per worker "
                   f"in {time.perf_counter() - started:.1f} s")

    def epoch_batches(name: str, shuffle: bool):
        if not config["cache_features"]:
            return shard_batches(train_shard if name == "train" else val_shard, shuffle)
        inputs, labels = cached[name]
        order = np.random.permutation(len(labels)) if shuffle else np.arange(len(labels))
        return ((inputs[order[i:i + batch_size]], labels[order[i:i + batch_size]])
                for i in range(0, len(labels), batch_size))

    train_step, stage = None, 0
    for epoch in range(state["epoch"] + 1, total_epochs + 1):
        wanted_stage = 1 if epoch <= config["epochs"] else 2
        if wanted_stage != stage:
            stage = wanted_stage
            learning_rate = config["lr"] if stage == 1 else config["lr"] * config["fine_tune_lr_factor"]
            with strategy.scope():
                if stage == 2:
                    unfreeze_top(model, config["unfreeze"])
                optimizer = keras.optimizers.Adam(learning_rate)
                optimizer.build(model.trainable_variables)
            if saved_optimizer is not None and state["stage"] == stage:
                _restore_optimizer(optimizer, saved_optimizer)
            saved_optimizer = None
            train_step = make_train_step(optimizer)
            _log(rank, f"stage {stage}: {len(model.trainable_variables)} trainable tensors, lr {learning_rate:g}")
        (loss, correct, seen), train_seconds = run_epoch(epoch_batches("train", shuffle=True), train_step)
        (val_loss, val_correct, val_seen), _ = run_epoch(epoch_batches("val", shuffle=False), val_step)
        metrics = {
            "epoch": epoch, "stage": stage,
            "loss": loss / max(seen, 1), "accuracy": correct / max(seen, 1),
            "val_loss": val_loss / max(val_seen, 1), "val_accuracy": val_correct / max(val_seen, 1),
            "train_images": int(seen), "val_images": int(val_seen), "train_seconds": train_seconds,
            "images_per_second": seen / train_seconds if train_seconds else 0.0,
        }
        state = {"epoch": epoch, "stage": stage, "history": state["history"] + [metrics]}
        _log(rank, "epoch {epoch}/{total}: loss {loss:.4f} accuracy {accuracy:.4f} val_loss {val_loss:.4f} "
                   "val_accuracy {val_accuracy:.4f} ({images_per_second:.1f} images/s)".format(total=total_epochs,
                                                                                               **metrics))
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if rank == 0:  # the variables are mirrored: one copy is the checkpoint
                model.save_weights(os.path.join(directory, WEIGHTS_FILE))
                np.savez(os.path.join(directory, OPTIMIZER_FILE),
                         **{f"v{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
                with open(os.path.join(directory, STATE_FILE), "w", encoding="utf-8") as f:
                    json.dump(state, f, indent=1)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{epoch:04d}")


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


def _restore_optimizer(optimizer, saved: dict[str, np.ndarray]) -> None:
    values = [saved[key] for key in sorted(saved)]
    variables = optimizer.variables
    if len(values) != len(variables) or any(tuple(v.shape) != w.shape for v, w in zip(variables, values)):
        return  # a different stage's optimizer: start this one fresh
    for variable, value in zip(variables, values):
        variable.assign(value)


def _limit_threads(cpus: float) -> None:
    import tensorflow as tf

    threads = max(1, int(cpus))
    try:  # only possible before TensorFlow's runtime starts in this process
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))
    except RuntimeError:
        pass


def _log(rank: int, message: str) -> None:
    if rank == 0:
        print(f"[finetune] {message}", flush=True)
