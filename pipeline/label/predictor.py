"""The predictor actor of the labeling job: one loaded model, decoded batches in, result rows out.

Rows are written the same way for every output head: ``label``/``score`` hold the most probable class;
``top_*`` hold the k best classes, or, with multi-label, every class at or above the threshold (best
first, possibly none). With embeddings, ``embedding`` holds the pooled penultimate features as
float16, null on error rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import storage
from pipeline.models.shipping import Shippable
from pipeline.models.user_model import ModelSettings
from pipeline.results import EMBEDDING_FIELD, result_schema

__all__ = ["Predictor"]


class Predictor:
    """Actor: loads the model once, then turns decoded batches into top-k result rows."""

    def __init__(self, model: Shippable, weights: Shippable, top_k: int, batch_size: int,
                 storage_options: dict[str, Any], precision: str = "float32", xla: bool = False,
                 settings: ModelSettings | None = None, cpu_threads: int | None = None, embeddings: bool = False):
        from pipeline.models.shipping import receive
        from pipeline.tensorflow_env import import_tensorflow_for_worker, use_cpu_threads

        # (importing pipeline set the process's TensorFlow defaults: pipeline.tensorflow_env)
        if cpu_threads:  # a CPU actor computes on its own share of cores, not on all of them at once
            use_cpu_threads(cpu_threads)
        tf = import_tensorflow_for_worker()

        if cpu_threads:
            tf.config.threading.set_intra_op_parallelism_threads(cpu_threads)
            tf.config.threading.set_inter_op_parallelism_threads(cpu_threads)
        self.cpu_threads = tf.config.threading.get_intra_op_parallelism_threads()  # 0: TensorFlow's default (all cores)
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
        loaded = load_model(receive(model), receive(weights), settings)  # local files were shipped by the driver
        self.weights_digest = weights_digest(loaded.keras_model)
        self.classifier = CompiledClassifier(loaded, top_k=top_k, batch_size=batch_size, jit_compile=xla,
                                             embeddings=embeddings)
        self.schema = result_schema(embeddings)
        self.model_name = getattr(model, "source", loaded.name)  # the name the user gave, not the node's copy
        size = loaded.input_size
        # Trace and warm up now, while the first batches decode, on a whole batch: the first call at a new
        # batch size also grows TensorFlow's host memory pools (1.0-1.5 core-s for MobileNetV2 on 1 thread),
        # and a 1-image warm-up paid that again on the first real batch (0.1-1.5 core-s more per actor).
        self.classifier.predict(np.zeros((batch_size, size, size, 3), np.uint8))

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """Result rows in the OUTPUT schema, plus the decode stage's ``transient`` flag for the driver (never stored)."""
        columns = {"path": [str(p) for p in batch["path"]], **self.result_columns(batch["image"], batch["error"])}
        return pa.table(columns, schema=self.schema).append_column(
            "transient", pa.array(np.asarray(batch["transient"], dtype=bool)))

    def result_columns(self, images: np.ndarray, decode_errors) -> dict[str, list | pa.Array]:
        """The prediction columns of OUTPUT (all but ``path``) for decoded ``images``; a row whose decode
        error is set gets that error and no prediction."""
        errors = [str(e) if e else None for e in decode_errors]
        ok = np.array([e is None for e in errors], dtype=bool)
        n, k = len(errors), self.classifier.top_k
        ids = np.zeros((n, k), np.int32)
        scores = np.zeros((n, k), np.float32)
        kept = np.zeros(n, np.int32)
        features = None
        if ok.any():
            top = self.classifier.predict(images[ok])
            ids[ok], scores[ok], kept[ok] = top.ids, top.scores, top.kept
            features = top.features
        names = self.classifier.names(ids)
        columns = {
            "label": [names[i][0] if ok[i] else None for i in range(n)],
            "score": [float(scores[i, 0]) if ok[i] else None for i in range(n)],
            "top_labels": [names[i][: kept[i]] if ok[i] else [] for i in range(n)],
            "top_scores": [scores[i, : kept[i]].tolist() if ok[i] else [] for i in range(n)],
            "top_ids": [ids[i, : kept[i]].tolist() if ok[i] else [] for i in range(n)],
            "model": [self.model_name] * n,
            "weights_digest": [self.weights_digest] * n,
            "error": errors,
        }
        if self.classifier.embeddings:
            columns["embedding"] = embedding_column(features, ok)
        return columns


def embedding_column(features: np.ndarray | None, ok: np.ndarray) -> pa.Array:
    """list<float16> with one vector per ok row (in order) and a null for each error row."""
    width = 0 if features is None else features.shape[1]
    lengths = np.where(ok, width, 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.zeros(0, np.float16) if features is None else features.astype(np.float16).ravel()
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), type=EMBEDDING_FIELD.type,
                                    mask=pa.array(~ok))
