"""Single-process classification: a few images in, top-k per image out. No Ray.

For a handful of files, a notebook, or checking a model before a cluster job.
Images are decoded in batches and run through the same compiled forward pass
the labeling job uses; a bad image becomes a result with ``error`` set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from pipeline import storage
from pipeline.errors import UserError
from pipeline.fetch import fetch_and_decode
from pipeline.inference import CompiledClassifier
from pipeline.label.config import LabelConfig
from pipeline.listing import open_listing
from pipeline.models.loading import load_model
from pipeline.models.user_model import ModelSettings
from pipeline.storage_retry import with_retries

# More images than this are a labeling job's work: classify holds every result and prints a table.
MAX_LISTED_IMAGES = 1000


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


def expand_inputs(paths: Iterable[str], retries: int = LabelConfig.read_retries,
                  max_images: int = MAX_LISTED_IMAGES) -> list[str]:
    """The images ``paths`` name, checked before any model loads (TensorFlow takes seconds to start).

    A file is taken as given (a bad one becomes a result with ``error``); a folder, glob or list file gives
    its images, found as ``pipeline label`` lists a SOURCE. UserError names every path that does not exist,
    and refuses more than ``max_images`` images with a pointer to ``pipeline label``.
    """
    paths = list(paths)
    missing = []
    for path in paths:
        fs, root = storage.filesystem(path)
        if not any(ch in root for ch in "*?[") and not with_retries("check", path, lambda: fs.exists(root), retries):
            missing.append(path)
    if missing:
        raise UserError(f"not found: {', '.join(missing)}; nothing was classified")
    images: list[str] = []
    for path in paths:
        listing = open_listing(path, retries, limit=max_images + 1 - len(images))
        if listing.kind == "file":
            images.append(path)
        else:
            images.extend(p for chunk in listing.chunks() for p in chunk.paths.to_pylist())
        if len(images) > max_images:
            raise UserError(f"'{path}' brings the images to classify past {max_images:,}: classify runs in this "
                            "process and prints every result; label a folder of any size on Ray with "
                            f"'pipeline label {path} OUTPUT' (Parquet, resumable)")
    return images


class Classifier:
    """One model loaded once, for classifying many times in this process (a notebook, a service).

    The defaults are a labeling job's (LabelConfig), so a check here shows what ``pipeline label`` stores.
    ``settings`` describe a model file the user trained (class names, preprocessing, head, multi-label).
    """

    def __init__(self, model: str = LabelConfig.model, top_k: int = LabelConfig.top_k,
                 weights: str = LabelConfig.weights, batch_size: int = LabelConfig.batch_size,
                 settings: ModelSettings | None = None, retries: int = LabelConfig.read_retries,
                 progress: Callable[[str], None] = lambda line: None):
        self.retries = retries
        self.compiled = CompiledClassifier(load_model(model, weights, settings), top_k=top_k, batch_size=batch_size)
        for note in self.compiled.loaded.notes:
            progress(note)

    @property
    def class_names(self) -> list[str]:
        return list(self.compiled.loaded.class_names)

    def __call__(self, images: Iterable[str | bytes]) -> list[Prediction]:
        return self.classify(images)

    def classify(self, images: Iterable[str | bytes]) -> list[Prediction]:
        """Classify paths, URLs or raw bytes; one Prediction per input, in order.

        A batch's files are read concurrently; a read that keeps failing after ``retries`` rounds (throttling,
        timeouts) is a result with ``error`` set, like a missing or broken file.
        """
        items = list(images)
        loaded, batch_size = self.compiled.loaded, self.compiled.batch_size
        results: list[Prediction] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            fetched = fetch_and_decode(chunk, loaded.input_size, loaded.resize_mode, self.retries)
            chunk_results = [Prediction(item if isinstance(item, str) else f"<bytes #{start + offset}>",
                                        error=error or None)
                             for offset, (item, error) in enumerate(zip(chunk, fetched.errors))]
            results.extend(chunk_results)
            decoded = np.array([p.error is None for p in chunk_results], bool)
            batch = [p for p in chunk_results if p.error is None]
            if batch:
                top = self.compiled.predict(fetched.images[decoded])
                rows = zip(batch, top.ids, top.scores, top.kept, self.compiled.names(top.ids))
                for prediction, ids, scores, kept, names in rows:
                    prediction.ids = [int(i) for i in ids[:kept]]
                    prediction.scores = [float(s) for s in scores[:kept]]
                    prediction.labels = names[:kept]
        return results


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
    """Classify paths, URLs or raw bytes with a model loaded for this call; one Prediction per input, in order.
    To classify many times, load once: ``Classifier(model, ...)``."""
    return Classifier(model, top_k, weights, batch_size, settings, retries, progress).classify(images)
