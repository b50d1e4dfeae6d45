"""The compiled forward pass: uint8 image batches in, top-k class ids and scores out.

Preprocessing runs inside the same ``tf.function`` as the model, next to it, so
the CPU decode stage only ships uint8 pixels and no model can get another
family's scaling. One input signature with a free batch dimension means one
trace, however many batches (``model.predict`` per batch retraces and is 2-3x slower).

Every output head becomes class probabilities, so every head fits one Parquet schema:
- softmax over N classes: used as is;
- one sigmoid unit p: two classes, probabilities [1 - p, p] (class 0 is the first sorted name);
- several sigmoid units: independent probabilities, ranked (or thresholded with multi-label);
- logits: softmax applied (sigmoid for one unit or multi-label).

With ``embeddings=True`` the same traced call also returns the pooled penultimate features
(``pipeline.models.embeddings``): one model with two outputs, built once at load, one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.models.loading import LoadedModel


@dataclass
class TopK:
    ids: np.ndarray  # (n, k) int32 class indices, best first
    scores: np.ndarray  # (n, k) float32 probabilities
    kept: np.ndarray | None = None  # (n,) entries of each row to write: k, or those above the multi-label threshold
    features: np.ndarray | None = None  # (n, d) float32 pooled penultimate features, with embeddings=True

    def __post_init__(self):
        if self.kept is None:
            self.kept = np.full(len(self.ids), self.ids.shape[1] if self.ids.ndim == 2 else 0, np.int32)


def to_probabilities(outputs, head: str, multi_label: bool = False):
    """Class probabilities (batch, classes) from a model's raw outputs (batch, units), inside a tf.function."""
    import tensorflow as tf

    units = outputs.shape[-1]
    if head == "logits":
        outputs = tf.sigmoid(outputs) if multi_label or units == 1 else tf.nn.softmax(outputs, axis=-1)
    if units == 1:  # one sigmoid unit: P(class 1) = p, P(class 0) = 1 - p
        outputs = tf.concat([1.0 - outputs, outputs], axis=-1)
    return outputs


class CompiledClassifier:
    """Runs a LoadedModel on whole batches with one traced graph."""

    def __init__(self, loaded: LoadedModel, top_k: int = 5, batch_size: int = 32, jit_compile: bool = False,
                 embeddings: bool = False):
        import tensorflow as tf

        from pipeline.models.embeddings import embedding_model

        self.loaded = loaded
        classes = len(loaded.class_names)
        # Multi-label keeps every class above the threshold, so it ranks them all.
        self.top_k = classes if loaded.multi_label else max(1, min(top_k, classes))
        self.batch_size = batch_size
        size = loaded.input_size
        self.embeddings = embeddings
        # Two outputs (classes, pooled features) from one graph: the features cost no second pass.
        model = embedding_model(loaded.keras_model, loaded.name) if embeddings else loaded.keras_model
        preprocess, k = loaded.preprocess_input, self.top_k
        head, multi_label = loaded.head, loaded.multi_label

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)], reduce_retracing=True,
                     jit_compile=jit_compile or None)  # XLA: fused kernels, compiled once per batch shape
        def forward(images):
            outputs = model(preprocess(tf.cast(images, tf.float32)), training=False)
            features = None
            if embeddings:
                outputs, features = outputs
                # MobileNet V1/V3 pool with keepdims: (n, 1, 1, d) -> (n, d)
                features = tf.reshape(tf.cast(features, tf.float32), [tf.shape(features)[0], -1])
            probabilities = to_probabilities(tf.cast(outputs, tf.float32), head, multi_label)
            result = tf.math.top_k(probabilities, k=k)
            if embeddings:
                return tf.cast(result.indices, tf.int32), result.values, features
            return tf.cast(result.indices, tf.int32), result.values

        self._forward = forward

    def predict(self, images: np.ndarray) -> TopK:
        """Top-k (and the features, with embeddings) for a (n, size, size, 3) uint8 array, in chunks of ``batch_size``."""
        n = len(images)
        if n == 0:
            return TopK(np.zeros((0, self.top_k), np.int32), np.zeros((0, self.top_k), np.float32),
                        features=np.zeros((0, 0), np.float32) if self.embeddings else None)
        ids, scores, features = [], [], []
        for start in range(0, n, self.batch_size):
            out = self._forward(images[start : start + self.batch_size])
            ids.append(out[0].numpy())
            scores.append(out[1].numpy())
            if self.embeddings:
                features.append(out[2].numpy())
        scores_all = np.concatenate(scores)
        kept = (scores_all >= self.loaded.threshold).sum(axis=1).astype(np.int32) if self.loaded.multi_label else None
        return TopK(np.concatenate(ids), scores_all, kept, np.concatenate(features) if features else None)

    def names(self, ids: np.ndarray) -> list[list[str]]:
        classes = self.loaded.class_names
        return [[classes[i] for i in row] for row in ids]
