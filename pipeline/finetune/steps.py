"""The compiled steps of a fine-tuning worker: the model's forward pass, one training step, one validation step
and the all-reduce of their sums, each a ``tf.function`` run through ``strategy.run``.

The loss is summed per example and divided by the GLOBAL batch (per-worker batch x workers), and the
optimizer all-reduces (sums) the gradients, so one step equals one step of single-process training on the
global batch. ``pipeline.finetune.worker`` builds them once per worker (the train step once per stage).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

Step = Callable[[Any, Any], Any]  # a compiled step: (inputs, labels) -> this worker's sums of the batch


class ImageForward:
    """The model on a batch of uint8 images. Augmentation (training only) and the base's own preprocessing run
    inside the compiled step, next to the model."""

    def __init__(self, model: keras.Model, preprocess: Callable[[tf.Tensor], tf.Tensor],
                 augment: keras.Sequential | None, size: int) -> None:
        import tensorflow as tf

        self.model, self.preprocess, self.augment = model, preprocess, augment
        self.input_spec = tf.TensorSpec([None, size, size, 3], tf.uint8)

    def __call__(self, images: tf.Tensor, training: bool) -> tf.Tensor:
        import tensorflow as tf

        x = tf.cast(images, tf.float32)
        if training and self.augment is not None:
            x = self.augment(x, training=True)
        return self.model(self.preprocess(x), training=training)


class FeatureForward:
    """The head alone, on the base's pooled features (``cache_features``): a frozen base without augmentation
    gives the same features every epoch, so they are computed once. The layers are the model's own head."""

    def __init__(self, model: keras.Model) -> None:
        import tensorflow as tf

        self.input_spec = tf.TensorSpec([None, model.get_layer("head_pool").output.shape[-1]], tf.float32)
        self.dropout, self.classes = model.get_layer("head_dropout"), model.get_layer("head_classes")

    def __call__(self, features: tf.Tensor, training: bool) -> tf.Tensor:
        return self.classes(self.dropout(features, training=training))


Forward = ImageForward | FeatureForward


class CompiledSteps:
    """The worker's ``tf.function`` steps. Each runs its replica function through ``strategy.run``, so the
    gradient all-reduce and the metric sums span every worker. The fixed input signature lets a shorter last
    batch reuse the same graph."""

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model, forward: Forward,
                 num_classes: int) -> None:
        import tensorflow as tf

        self.strategy, self.model, self.forward = strategy, model, forward
        self.signature = [forward.input_spec, tf.TensorSpec([None], tf.int32)]
        self.val_step = _compile_val_step(strategy, forward, num_classes, self.signature)
        self.all_reduce_sum = _compile_all_reduce_sum(strategy)

    def train_step(self, optimizer: keras.optimizers.Optimizer) -> Step:
        """A new compiled step for each stage: a stage has its own optimizer and its own trainable variables."""
        return _compile_train_step(self.strategy, self.forward, self.model.trainable_variables, optimizer,
                                   self.signature)


def _compile_train_step(strategy: tf.distribute.Strategy, forward: Forward, variables: list[tf.Variable],
                        optimizer: keras.optimizers.Optimizer, signature: list[tf.TensorSpec]) -> Step:
    """The loss is summed per example and divided by the GLOBAL batch, so the all-reduced (summed) gradients
    make one step of single-process training on the global batch."""
    import keras
    import tensorflow as tf

    def replica_step(inputs: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            probabilities = forward(inputs, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
            global_batch = tf.shape(labels)[0] * strategy.num_replicas_in_sync
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))  # all-reduces (sums) across workers
        return _sums(per_example, probabilities, labels)

    @tf.function(input_signature=signature)
    def train_step(inputs: tf.Tensor, labels: tf.Tensor) -> Any:
        return strategy.run(replica_step, args=(inputs, labels))

    return train_step


def _compile_val_step(strategy: tf.distribute.Strategy, forward: Forward, num_classes: int,
                      signature: list[tf.TensorSpec]) -> Step:
    """The training sums plus the flattened confusion matrix, so the best epoch's matrix needs no second pass."""
    import keras
    import tensorflow as tf

    @tf.function(input_signature=signature)
    def val_step(inputs: tf.Tensor, labels: tf.Tensor) -> Any:
        def replica_step(inputs: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, ...]:
            probabilities = forward(inputs, training=False)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
            predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            confusion = tf.math.confusion_matrix(labels, predicted, num_classes=num_classes, dtype=tf.float32)
            return (*_sums(per_example, probabilities, labels), tf.reshape(confusion, [-1]))

        return strategy.run(replica_step, args=(inputs, labels))

    return val_step


def _compile_all_reduce_sum(strategy: tf.distribute.Strategy) -> Callable[[np.ndarray], tf.Tensor]:
    """Every worker's sums added up: the metrics of the whole epoch, the same on every worker."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float64)])
    def all_reduce_sum(values: tf.Tensor) -> tf.Tensor:
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(values,)), axis=None)

    return all_reduce_sum


def _sums(per_example: tf.Tensor, probabilities: tf.Tensor,
          labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    import tensorflow as tf

    predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))
    return tf.reduce_sum(per_example), correct, tf.cast(tf.shape(labels)[0], tf.float32)
