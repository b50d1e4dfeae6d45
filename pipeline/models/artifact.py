"""Fine-tuned model artifacts: a ``.keras`` file plus what labeling needs to use it.

An artifact is a folder (local or any fsspec URL) holding ``model.keras`` and
``pipeline_model.json`` (class names, base model, input size, resize mode). Preprocessing is
not stored as code: the base model's registry entry supplies it, so a
fine-tuned ResNet is fed exactly what its base was trained on.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from pipeline import storage

MODEL_FILE = "model.keras"
META_FILE = "pipeline_model.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ArtifactMeta:
    base: str  # registry name of the base model (its preprocess_input is used)
    input_size: int  # square input resolution the model was trained at
    class_names: list[str]  # output index -> class name
    format_version: int = FORMAT_VERSION
    epoch: int | None = None  # fine-tuning: the training epoch whose weights these are (the best one)
    resize: str = "squash"  # how training images were fitted to input_size (--resize); labeling defaults to it
    training: dict | None = None  # fine-tuning: epoch counts asked for, epochs trained, each --resume and its changes


def is_artifact(location: str) -> bool:
    try:
        return storage.exists(storage.join(location, META_FILE))
    except Exception:  # noqa: BLE001 - an unreachable location is simply not an artifact
        return False


def save_artifact(model, location: str, meta: ArtifactMeta) -> None:
    """Write ``model`` and ``meta`` to ``location``; the metadata goes last so a half-written artifact is not found."""
    import tempfile

    fs, root = storage.filesystem(location)
    fs.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        model.save(local)
        fs.put_file(local, storage.join(root, MODEL_FILE))
    with fs.open(storage.join(root, META_FILE), "w") as f:
        json.dump(asdict(meta), f, indent=2)


def read_meta(location: str) -> ArtifactMeta:
    fs, root = storage.filesystem(location)
    with fs.open(storage.join(root, META_FILE), "r") as f:
        data = json.load(f)
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{location}: artifact format {data.get('format_version')} is not supported")
    return ArtifactMeta(**data)


def load_artifact_model(location: str):
    """The Keras model of the artifact, loaded in safe mode (no arbitrary code)."""
    import keras

    local = storage.local_copy(storage.join(location, MODEL_FILE))
    return keras.saving.load_model(local, compile=False, safe_mode=True)
