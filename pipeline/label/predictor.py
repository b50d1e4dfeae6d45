"""The predictor actor of the labeling job: one loaded model, decoded batches in, result rows out."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import storage
from pipeline.results import SCHEMA


class Predictor:
    """Actor: loads the model once, then turns decoded batches into top-k result rows."""

    def __init__(self, model: str, weights: str, top_k: int, batch_size: int, storage_options: dict[str, Any],
                 precision: str = "float32", xla: bool = False):
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)  # fractional-GPU actors share a card
        import keras

        if precision == "mixed":
            # float16 compute, float32 variables: tensor cores on GPU. Applies to models built here
            # (the registry); a saved model keeps the dtype policy it was saved with.
            keras.mixed_precision.set_global_policy("mixed_float16")

        from pipeline.inference import CompiledClassifier
        from pipeline.label.manifest import weights_digest
        from pipeline.models.loading import load_model

        storage.set_storage_options(storage_options)
        if weights == "none":
            keras.utils.set_random_seed(0)  # the same random weights in every actor: rows stay comparable
        loaded = load_model(model, weights)
        self.weights_digest = weights_digest(loaded.keras_model)
        self.classifier = CompiledClassifier(loaded, top_k=top_k, batch_size=batch_size, jit_compile=xla)
        self.model_name = self.classifier.loaded.name
        size = self.classifier.loaded.input_size
        self.classifier.predict(np.zeros((1, size, size, 3), np.uint8))  # trace now, while the first batches decode

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Result rows in SCHEMA, plus the decode stage's ``transient`` flag for the driver (never stored)."""
        errors = [str(e) if e else None for e in batch["error"]]
        ok = np.array([e is None for e in errors], dtype=bool)
        n, k = len(errors), self.classifier.top_k
        ids = np.zeros((n, k), np.int32)
        scores = np.zeros((n, k), np.float32)
        if ok.any():
            top = self.classifier.predict(batch["image"][ok])
            ids[ok], scores[ok] = top.ids, top.scores
        names = self.classifier.names(ids)
        return pa.table(
            {
                "path": [str(p) for p in batch["path"]],
                "label": [names[i][0] if ok[i] else None for i in range(n)],
                "score": [float(scores[i, 0]) if ok[i] else None for i in range(n)],
                "top_labels": [names[i] if ok[i] else [] for i in range(n)],
                "top_scores": [scores[i].tolist() if ok[i] else [] for i in range(n)],
                "top_ids": [ids[i].tolist() if ok[i] else [] for i in range(n)],
                "model": [self.model_name] * n,
                "weights_digest": [self.weights_digest] * n,
                "error": errors,
            },
            schema=SCHEMA,
        ).append_column("transient", pa.array(np.asarray(batch["transient"], dtype=bool)))


def model_input_size(model: str) -> int:
    """The square size images are decoded to, known without building the model."""
    from pipeline.models import artifact
    from pipeline.models.loading import resolve_spec

    spec = resolve_spec(model)
    return spec.input_size if spec is not None else artifact.read_meta(model).input_size
