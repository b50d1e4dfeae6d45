"""Single-process classification: a few images in, top-k per image out. No Ray.

For a handful of files, a notebook, or checking a model before a cluster job.
Images are decoded in batches and run through the same compiled forward pass
the labeling job uses; a bad image becomes a result with ``error`` set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from pipeline.fetch import fetch_and_decode
from pipeline.inference import CompiledClassifier
from pipeline.label.config import LabelConfig
from pipeline.models.loading import load_model
from pipeline.models.user_model import ModelSettings


@dataclass
class Prediction:
    source: str  # the path/URL given, or "<bytes #i>"
    labels: list[str] = field(default_factory=list)  # k class names (multi-label: those above threshold), best first
    scores: list[float] = field(default_factory=list)  # k probabilities
    ids: list[int] = field(default_factory=list)  # k class indices
    error: str | None = None  # why there is no prediction

    @property
    def label(self) -> str | None:
        return self.labels[0] if self.labels else None

    @property
    def score(self) -> float | None:
        return self.scores[0] if self.scores else None


def classify(
    images: Iterable[str | bytes],
    model: str = LabelConfig.model,
    top_k: int = LabelConfig.top_k,
    weights: str = LabelConfig.weights,
    batch_size: int = LabelConfig.batch_size,
    settings: ModelSettings | None = None,
    progress: Callable[[str], None] = lambda line: None,
    retries: int = LabelConfig.read_retries,
) -> list[Prediction]:
    """Classify paths, URLs or raw bytes; one Prediction per input, in order.

    The defaults are a labeling job's (LabelConfig), so a check here shows what ``pipeline label`` stores.

    ``settings`` describe a model file the user trained (class names, preprocessing, head, multi-label).
    A batch's files are read concurrently; a read that keeps failing after ``retries`` rounds (throttling,
    timeouts) is a result with ``error`` set, like a missing or broken file.
    """
    items = list(images)
    classifier = CompiledClassifier(load_model(model, weights, settings), top_k=top_k, batch_size=batch_size)
    for note in classifier.loaded.notes:
        progress(note)
    size = classifier.loaded.input_size
    results: list[Prediction] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        fetched = fetch_and_decode(chunk, size, classifier.loaded.resize_mode, retries)
        chunk_results = [Prediction(item if isinstance(item, str) else f"<bytes #{start + offset}>",
                                    error=error or None)
                         for offset, (item, error) in enumerate(zip(chunk, fetched.errors))]
        results.extend(chunk_results)
        decoded = np.array([p.error is None for p in chunk_results], bool)
        batch = [p for p in chunk_results if p.error is None]
        if batch:
            top = classifier.predict(fetched.images[decoded])
            rows = zip(batch, top.ids, top.scores, top.kept, classifier.names(top.ids))
            for prediction, ids, scores, kept, names in rows:
                prediction.ids = [int(i) for i in ids[:kept]]
                prediction.scores = [float(s) for s in scores[:kept]]
                prediction.labels = names[:kept]
    return results
