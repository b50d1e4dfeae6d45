"""What ``--model`` / ``--weights`` / the model settings name, resolved once, before any worker loads it.

A labeling driver needs a model's kind, input size, default resize, identity (what its manifest compares)
and whether it has pooled features for ``--embeddings`` before it lists anything. ``resolve_model`` finds
them in one pass: one metadata read for a fine-tuned folder, one load of a user's model file, one digest of
each file. The job, its manifest, the decode stage and the predictor actors all read the one
``ResolvedModel``; none of them asks the model location again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pipeline import storage
from pipeline.models import artifact, user_model
from pipeline.models.embeddings import no_features_message
from pipeline.models.errors import ModelLoadError
from pipeline.models.loading import (build_imagenet, imagenet_class_names, load_user_model, model_kind,
                                     refuse_file_settings)
from pipeline.models.registry import KERAS_DOWNLOAD, REGISTRY, ModelSpec
from pipeline.models.user_model import ModelSettings, UserModelSummary

__all__ = ["ResolvedModel", "resolve_model"]

WEIGHTS_KEYWORDS = ("imagenet", "none")


@dataclass(frozen=True, eq=False)
class ResolvedModel:
    """One model as the driver resolved it; what the manifest records of it is ``identity``."""

    location: str  # as the user gave it: a registry name, a fine-tuned folder or a model file, local or URL
    kind: str  # "registry", "artifact" (a 'pipeline finetune' folder) or "user" (a model file)
    name: str  # the manifest's and the rows' ``model``: the registry's own spelling, else the location
    weights: str  # imagenet | none | a weights file or URL (registry models only)
    settings: ModelSettings  # a user's model file: classes, preprocessing, head...; default otherwise
    input_size: int  # the square side images are decoded to
    resize_mode: str  # how images are fitted to input_size unless --resize says otherwise
    class_names: tuple[str, ...]  # output index -> name
    identity: dict[str, Any]  # kind, location, digests of the model and weights files, how the outputs are read
    notes: tuple[str, ...] = ()  # how a user's model file will be read, worth printing before the job
    has_features: bool = True  # pooled penultimate features exist for --embeddings
    base: str | None = field(default=None)  # a fine-tuned model's registry base

    def require_features(self) -> None:
        """--embeddings: a ModelLoadError when this model has no pooled features to store."""
        if not self.has_features:
            raise ModelLoadError(no_features_message(self.location))


def resolve_model(model: str, weights: str = "imagenet", settings: ModelSettings | None = None) -> ResolvedModel:
    """Check ``model`` with ``weights`` and ``settings`` and describe it, raising ModelLoadError.

    Cheap for registry names, fine-tuned folders and weights files (a stat, a metadata read, a digest). A
    user's model file is loaded once (to check its input, output and classes; cached per file version in
    this process). For ImageNet weights Keras downloads, the model is built once, which fetches the file
    into Keras's cache now, so an offline machine fails here and not in every worker.
    """
    settings = settings or ModelSettings()
    kind = model_kind(model)
    if kind == "user":
        return _resolve_user_model(model, weights, settings)
    refuse_file_settings(model, settings)
    if kind == "artifact":
        return _resolve_artifact(model, weights)
    return _resolve_registry(REGISTRY[model.lower().replace("-", "_")], model, weights)


def _resolve_registry(spec: ModelSpec, model: str, weights: str) -> ResolvedModel:
    identity: dict[str, Any] = {"kind": "registry", "model": spec.name, "weights": weights,
                                "input_size": spec.input_size}
    if weights == "imagenet" and spec.weights == KERAS_DOWNLOAD:
        build_imagenet(spec)
    elif weights not in WEIGHTS_KEYWORDS:
        if not storage.is_url(weights) and not os.path.exists(weights):
            raise ModelLoadError(f"weights file '{weights}' does not exist; pass an existing .keras/.h5/"
                                 ".weights.h5 file or URL, 'imagenet' or 'none'")
        identity["weights_sha256"] = _digest(weights, "file")
    return ResolvedModel(model, "registry", spec.name, weights, ModelSettings(), spec.input_size, "squash",
                         tuple(imagenet_class_names()), identity)


def _resolve_artifact(model: str, weights: str) -> ResolvedModel:
    if weights != "imagenet":
        raise ModelLoadError(f"--weights applies to registry models; '{model}' is a fine-tuned model that carries "
                             "its own weights. Leave --weights out")
    try:
        meta = artifact.read_meta(model)
    except Exception as err:  # noqa: BLE001 - a damaged or unreadable folder is the user's to fix
        raise ModelLoadError(f"cannot read fine-tuned model '{model}': {type(err).__name__}: {err}") from err
    identity = {"kind": "finetuned", "model": model,
                "sha256": _digest(storage.join(model, artifact.MODEL_FILE), "file"),
                "base": meta.base, "input_size": meta.input_size, "classes": list(meta.class_names)}
    return ResolvedModel(model, "artifact", model, weights, ModelSettings(), meta.input_size, meta.resize,
                         tuple(meta.class_names), identity, base=meta.base)


def _resolve_user_model(model: str, weights: str, settings: ModelSettings) -> ResolvedModel:
    summary = user_model_summary(model, weights, settings)
    identity = {"kind": summary.format, "model": model, "sha256": _digest(model, summary.format),
                "preprocess": summary.preprocess, "classes": list(summary.class_names), "head": summary.head,
                "input_size": summary.input_size, "multi_label": settings.multi_label,
                "threshold": settings.threshold if settings.multi_label else None}
    return ResolvedModel(model, "user", model, weights, settings, summary.input_size, "squash",
                         tuple(summary.class_names), identity, notes=tuple(summary.notes),
                         has_features=summary.features is not None)


def user_model_summary(model: str, weights: str, settings: ModelSettings) -> UserModelSummary:
    """How a user's model file will be read (input size, head, class names), cached per file version."""
    return _cached_summary(model, weights, settings, _stamp(model))


@lru_cache(maxsize=8)
def _cached_summary(model: str, weights: str, settings: ModelSettings, stamp: str) -> UserModelSummary:
    return load_user_model(model, weights, settings)[1]


@lru_cache(maxsize=8)
def _cached_digest(location: str, fmt: str, stamp: str) -> str:
    return user_model.file_digest(user_model.fetch(location, fmt))


def _digest(location: str, fmt: str) -> str:
    return _cached_digest(location, fmt, _stamp(location))


def _stamp(location: str) -> str:
    """Changes when a local model file or folder changes (a remote one is keyed by its ETag in the cache)."""
    if storage.is_url(location):
        return ""
    path = os.path.join(location, "saved_model.pb") if os.path.isdir(location) else location
    try:
        stat = os.stat(path)
    except OSError:
        return "missing"
    return f"{stat.st_mtime_ns}:{stat.st_size}"
