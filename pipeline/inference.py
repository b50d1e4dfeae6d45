"""The compiled forward pass: uint8 image batches in, top-k class ids and scores out.

Preprocessing runs inside the same ``tf.function`` as the model, next to it, so
the CPU decode stage only ships uint8 pixels and no model can get another
family's scaling. One input signature with a free batch dimension means one
trace, however many batches (``model.predict`` per batch retraces and is 2-3x slower).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.models.loading import LoadedModel


@dataclass
class TopK:
    ids: np.ndarray  # (n, k) int32 class indices, best first
    scores: np.ndarray  # (n, k) float32 probabilities


class CompiledClassifier:
    """Runs a LoadedModel on whole batches with one traced graph."""

    def __init__(self, loaded: LoadedModel, top_k: int = 5, batch_size: int = 32, jit_compile: bool = False):
        import tensorflow as tf

        self.loaded = loaded
        self.top_k = max(1, min(top_k, len(loaded.class_names)))
        self.batch_size = batch_size
        size = loaded.input_size
        model, preprocess, k = loaded.keras_model, loaded.preprocess_input, self.top_k

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)], reduce_retracing=True,
                     jit_compile=jit_compile or None)  # XLA: fused kernels, compiled once per batch shape
        def forward(images):
            probabilities = model(preprocess(tf.cast(images, tf.float32)), training=False)
            result = tf.math.top_k(tf.cast(probabilities, tf.float32), k=k)
            return tf.cast(result.indices, tf.int32), result.values

        self._forward = forward

    def predict(self, images: np.ndarray) -> TopK:
        """Top-k for a (n, size, size, 3) uint8 array, run in chunks of ``batch_size``."""
        n = len(images)
        if n == 0:
            return TopK(np.zeros((0, self.top_k), np.int32), np.zeros((0, self.top_k), np.float32))
        ids, scores = [], []
        for start in range(0, n, self.batch_size):
            i, s = self._forward(images[start : start + self.batch_size])
            ids.append(i.numpy())
            scores.append(s.numpy())
        return TopK(np.concatenate(ids), np.concatenate(scores))

    def names(self, ids: np.ndarray) -> list[list[str]]:
        classes = self.loaded.class_names
        return [[classes[i] for i in row] for row in ids]
