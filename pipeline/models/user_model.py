"""Classifiers users trained themselves: a ``.keras`` file, a full-model ``.h5``, or a SavedModel folder.

Loading stays safe: ``.keras`` and ``.h5`` load in Keras safe mode, so a ``Lambda`` layer or a custom
class is refused with what to do, never loaded unsafely; a SavedModel runs its serving signature, a
graph with no Python code. Local files and any fsspec URL work; remote ones are fetched once per machine.
What Keras cannot tell us (class names, input scaling) comes from ``ModelSettings``.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.models.errors import ModelLoadError
from pipeline.models.keras2_h5 import keras2_h5_compatible

SAVED_MODEL_FILE = "saved_model.pb"
WEIGHTS_ONLY_SUFFIX = ".weights.h5"
HEADS = ("auto", "softmax", "sigmoid", "logits")
PROBE_SEED = 13


@dataclass(frozen=True)
class ModelSettings:
    """What a user says about their own model that the file itself does not (all optional but ``preprocess``)."""

    classes: tuple[str, ...] | None = None  # output index -> name; None: class_0..class_{n-1}
    preprocess: str | None = None  # rescale|caffe|tf|torch|none|<registry name>; required for a model file
    input_size: int | None = None  # square input side; only needed when the model's input shape is open
    head: str = "auto"  # what the outputs are: auto (detect), softmax, sigmoid or logits
    multi_label: bool = False  # write every class whose probability reaches ``threshold``
    threshold: float = 0.5  # multi-label cut-off, a probability

    def given(self) -> list[str]:
        """The options set away from their defaults, spelled as on the command line."""
        default = ModelSettings()
        return [f"--{name.replace('_', '-')}" for name, value in asdict(self).items()
                if value != getattr(default, name)]


@dataclass(frozen=True)
class UserModelSummary:
    """What labeling needs to know about a user's model, found once before any cluster work."""

    location: str  # as the user gave it
    format: str  # keras | h5 | saved_model
    input_size: int  # square side images are decoded to
    outputs: int  # output units (1 for a single sigmoid)
    head: str  # softmax | sigmoid | logits, as declared or detected
    head_detected: bool  # False when declared with --head
    class_names: tuple[str, ...]  # output index -> name (two for a single sigmoid unit)
    preprocess: str  # canonical --preprocess value
    notes: tuple[str, ...]  # lines the job prints before it starts
    features: str | None = None  # where --embeddings reads the pooled features; None: none found


def model_format(location: str) -> str | None:
    """'keras', 'h5', 'saved_model' or 'weights' (a weights-only file) for a model location; None if none of them."""
    name = location.rstrip("/").lower()
    if name.endswith(WEIGHTS_ONLY_SUFFIX):
        return "weights"
    if name.endswith(".keras"):
        return "keras"
    if name.endswith((".h5", ".hdf5")):
        return "h5"
    try:
        if storage.exists(storage.join(location.rstrip("/"), SAVED_MODEL_FILE)):
            return "saved_model"
    except Exception:  # noqa: BLE001 - an unreachable location is simply not a SavedModel
        return None
    return None


def parse_classes(text: str | None) -> tuple[str, ...] | None:
    """``--classes``: a text file (local or URL) with one name per line, or a comma-separated list."""
    if not text or not text.strip():
        return None
    looks_like_file = storage.is_url(text) or os.path.isfile(text) or (
        "," not in text and (os.sep in text or text.lower().endswith((".txt", ".csv", ".names"))))
    if looks_like_file:
        try:
            lines = storage.read_bytes(text).decode("utf-8").splitlines()
        except FileNotFoundError:
            raise ModelLoadError(f"classes file '{text}' does not exist; pass a file with one class name "
                                 "per line or a comma-separated list such as --classes cats,dogs") from None
        except Exception as err:  # noqa: BLE001
            raise ModelLoadError(f"cannot read classes file '{text}': {type(err).__name__}: {err}") from err
        names = [line.strip() for line in lines if line.strip()]
    else:
        names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ModelLoadError(f"--classes '{text}' names no class; give one name per line or cats,dogs")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelLoadError(f"--classes names {', '.join(duplicates)} more than once; each output needs its own name")
    return tuple(names)


def fetch(location: str, fmt: str) -> str:
    """A local path for ``location``: itself when local, else a per-machine cached copy (file or folder)."""
    try:
        if fmt != "saved_model":
            local = storage.local_copy(location)
            if not os.path.exists(local):
                raise FileNotFoundError(local)
            return local
        return _local_folder(location.rstrip("/"))
    except FileNotFoundError:
        raise ModelLoadError(f"model file '{location}' does not exist; pass a .keras file, a full-model .h5 "
                             "file or a SavedModel folder (local path or URL)") from None
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - any storage failure is the user's to fix
        raise ModelLoadError(f"cannot read model '{location}': {type(err).__name__}: {err}") from err


def _local_folder(location: str) -> str:
    """A SavedModel folder: the folder itself when local, else a cached copy keyed by its files' stamps."""
    if not storage.is_url(location):
        return location[len("file://"):] if location.startswith("file://") else location
    fs, root = storage.filesystem(location)
    files = fs.find(root, detail=True)
    stamp = sorted((p, str(i.get("size")), str(i.get("ETag") or i.get("mtime") or i.get("LastModified")))
                   for p, i in files.items())
    key = hashlib.sha256(json.dumps([location, stamp]).encode()).hexdigest()[:20]
    target = os.path.join(storage.cache_dir("downloads"), key, os.path.basename(root.rstrip("/")))
    if not os.path.exists(target):
        tmp = f"{target}.{os.getpid()}.part"
        for path in files:
            local = os.path.join(tmp, os.path.relpath(path, root))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            fs.get_file(path, local)
        os.replace(tmp, target)
    return target


def load_callable(location: str, fmt: str, local: str) -> Any:
    """The model as a callable ``f(images, training=False)``: a Keras model or a SavedModel's signature."""
    if fmt == "weights":
        raise ModelLoadError(_weights_only_message(location))
    if fmt == "saved_model":
        return ServingSignature(location, local)
    if fmt == "keras" and not zipfile.is_zipfile(local):
        raise ModelLoadError(f"'{location}' is not a Keras model: a .keras file is a zip archive written by "
                             "model.save('name.keras')")
    if fmt == "h5":
        _check_full_model_h5(location, local)
        local = keras2_h5_compatible(local)
    import keras

    try:
        return keras.saving.load_model(local, compile=False, safe_mode=True)
    except Exception as err:  # noqa: BLE001 - Keras raises ValueError, TypeError, KeyError...
        raise ModelLoadError(_refusal_message(location, local, fmt, err)) from err


def _check_full_model_h5(location: str, local: str) -> None:
    import h5py

    if not h5py.is_hdf5(local):
        raise ModelLoadError(f"'{location}' is not a Keras model: it is not an HDF5 file as written by "
                             "model.save('name.h5')")
    with h5py.File(local, "r") as f:
        if "model_config" not in f.attrs:
            raise ModelLoadError(_weights_only_message(location))


def _weights_only_message(location: str) -> str:
    return (f"'{location}' holds weights only, no architecture, so it cannot be used as --model. Save the "
            "whole model with model.save('name.keras') and pass that, or pass the registry model these "
            f"weights belong to: --model NAME --weights {location}")


def _refusal_message(location: str, local: str, fmt: str, err: BaseException) -> str:
    text = str(err)
    custom = _custom_classes(local) if fmt == "keras" else []
    if "Lambda" in text:
        return (f"refusing to load '{location}': it contains a Lambda layer, whose Python code Keras safe "
                "mode will not run (loading it could execute arbitrary code). Replace the Lambda with "
                "built-in layers (e.g. Rescaling) and save again, or export a SavedModel "
                "(model.export('folder')) and pass that folder: it runs as a graph, without Python code")
    if custom or "Unknown layer" in text or "Could not locate" in text:
        named = f" ({', '.join(custom)})" if custom else ""
        return (f"refusing to load '{location}': it uses custom classes{named} that Keras safe mode cannot "
                "rebuild without their Python code. Rebuild the model from built-in Keras layers and save "
                "again, or export a SavedModel (model.export('folder')) and pass that folder")
    first = (text.strip() or type(err).__name__).splitlines()[0][:300]
    return (f"'{location}' is not a Keras model we can load ({type(err).__name__}: {first}). If it was saved by "
            "another Keras version, load it there and save it again as .keras, or export a SavedModel "
            "(model.export('folder')) and pass that folder")


def _custom_classes(local: str) -> list[str]:
    """Classes in a .keras file's config whose module is not Keras's own (so safe mode cannot build them)."""
    try:
        with zipfile.ZipFile(local) as archive:
            config = json.loads(archive.read("config.json"))
    except Exception:  # noqa: BLE001 - no readable config: nothing to name
        return []
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            module, name = node.get("module"), node.get("class_name")
            if isinstance(module, str) and isinstance(name, str) and not module.startswith("keras"):
                found.append(f"{module}.{name}" if module else name)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return sorted(set(found))


class ServingSignature:
    """A SavedModel's ``serving_default`` signature, called like a Keras model: images in, one tensor out."""

    def __init__(self, location: str, local: str):
        import tensorflow as tf

        try:
            self._loaded = tf.saved_model.load(local)  # keep a reference: the signature uses its variables
        except Exception as err:  # noqa: BLE001
            first = (str(err).strip() or type(err).__name__).splitlines()[0][:300]
            raise ModelLoadError(f"'{location}' is not a SavedModel we can load ({first})") from err
        signature = self._loaded.signatures.get("serving_default")
        if signature is None:
            raise ModelLoadError(f"SavedModel '{location}' has no 'serving_default' signature; export it with "
                                 "model.export('folder') (Keras 3) or tf.saved_model.save(model, 'folder')")
        _, inputs = signature.structured_input_signature
        if len(inputs) != 1:
            raise ModelLoadError(f"SavedModel '{location}' takes {len(inputs)} inputs ({', '.join(inputs)}); "
                                 "labeling feeds one batch of images, so the model must take exactly one")
        self.input_name, spec = next(iter(inputs.items()))
        self.input_shape = tuple(spec.shape.as_list()) if spec.shape.rank is not None else ()
        self.input_dtype = spec.dtype
        outputs = signature.structured_outputs
        if len(outputs) != 1:
            raise ModelLoadError(f"SavedModel '{location}' has {len(outputs)} outputs ({', '.join(outputs)}); "
                                 "a classifier for labeling has one")
        self.output_name, out_spec = next(iter(outputs.items()))
        self.output_shape = tuple(out_spec.shape.as_list()) if out_spec.shape.rank is not None else ()
        self._signature = signature

    def get_weights(self) -> list[np.ndarray]:
        """The signature's variables as arrays, in its own order (like ``keras.Model.get_weights``)."""
        return [v.numpy() for v in self._signature.variables]

    def __call__(self, images, training: bool = False):
        import tensorflow as tf

        return self._signature(**{self.input_name: tf.cast(images, self.input_dtype)})[self.output_name]


def shapes(model: Any, location: str) -> tuple[tuple, tuple]:
    """(input shape, output shape) of a loaded model, each with the batch axis first."""
    if isinstance(model, ServingSignature):
        return model.input_shape, model.output_shape
    inputs, outputs = getattr(model, "inputs", None), getattr(model, "outputs", None)
    if not inputs or not outputs:
        raise ModelLoadError(f"'{location}' does not say its input and output shapes (a subclassed model?); "
                             "save a functional or Sequential model, or export a SavedModel")
    if len(inputs) != 1:
        raise ModelLoadError(f"'{location}' takes {len(inputs)} inputs; labeling feeds one batch of images, "
                             "so the model must take exactly one")
    if len(outputs) != 1:
        raise ModelLoadError(f"'{location}' has {len(outputs)} outputs; a classifier for labeling has one")
    return tuple(inputs[0].shape), tuple(outputs[0].shape)


def image_input_size(input_shape: tuple, location: str, declared: int | None) -> int:
    """The square side images are decoded to: the model's own, or ``--input-size`` when the model leaves it open."""
    if len(input_shape) != 4 or input_shape[-1] != 3:
        raise ModelLoadError(f"'{location}' takes input of shape {_shape(input_shape)}, not images: labeling "
                             "feeds RGB image batches of shape (batch, height, width, 3)")
    height, width = input_shape[1], input_shape[2]
    if height is None or width is None:
        if declared is None:
            raise ModelLoadError(f"'{location}' accepts any image size {_shape(input_shape)}; pass --input-size "
                                 "with the side length it was trained at (e.g. --input-size 224)")
        return declared
    if height != width:
        raise ModelLoadError(f"'{location}' takes {height}x{width} images; labeling resizes to squares, so "
                             "only a model with a square input can be used")
    if declared is not None and declared != height:
        raise ModelLoadError(f"--input-size {declared} does not match '{location}', which takes {height}x{width} "
                             "images; leave --input-size out")
    return int(height)


def output_units(output_shape: tuple, location: str) -> int:
    if len(output_shape) != 2 or output_shape[-1] is None:
        raise ModelLoadError(f"'{location}' outputs shape {_shape(output_shape)}; a classifier outputs "
                             "(batch, classes)")
    return int(output_shape[-1])


def final_activation(model: Any) -> str | None:
    """The activation of a Keras model's last layer ('softmax', 'sigmoid', 'linear', ...), None if unknown."""
    layers = getattr(model, "layers", None)
    if not layers:
        return None
    last = layers[-1]
    if getattr(last, "layers", None):  # a nested model as the last layer
        return final_activation(last)
    if type(last).__name__ == "Softmax":
        return "softmax"
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", None) if activation is not None else None


def detect_head(model: Any, preprocess, input_size: int, units: int) -> str:
    """softmax, sigmoid or logits: from the last layer's activation, else from outputs on probe images.

    A SavedModel does not name its activation, so it is probed with a few noise images: values outside
    [0, 1] are logits; rows summing to 1 are a softmax; otherwise independent sigmoids.
    """
    activation = final_activation(model)
    if activation in ("softmax", "sigmoid"):
        return activation
    if activation == "linear":
        return "logits"
    probe = np.random.default_rng(PROBE_SEED).integers(0, 256, (4, input_size, input_size, 3)).astype(np.float32)
    outputs = np.asarray(model(preprocess(probe), training=False), dtype=np.float64)
    if outputs.min() < -1e-6 or outputs.max() > 1 + 1e-6:
        return "logits"
    if units > 1 and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3):
        return "softmax"
    return "sigmoid"


def class_names_for(units: int, classes: tuple[str, ...] | None, location: str) -> tuple[tuple[str, ...], list[str]]:
    """Output index -> name, and the notes to print about how the names were chosen."""
    expected = 2 if units == 1 else units
    if classes is None:
        names = tuple(f"class_{i}" for i in range(expected))
        return names, [f"no --classes given: the {expected} classes are named class_0..class_{expected - 1}"]
    if len(classes) != expected:
        what = "one sigmoid unit, which is two classes" if units == 1 else f"{units} output units"
        raise ModelLoadError(f"'{location}' has {what}, but --classes names {len(classes)} "
                             f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); "
                             f"pass exactly {expected} names in the model's output order")
    if units == 1:
        names = tuple(sorted(classes))
        return names, [f"one sigmoid unit p: '{names[1]}' scores p and '{names[0]}' 1-p (names sorted, as "
                       "flow_from_directory numbers class folders)"]
    return tuple(classes), []


def file_digest(local: str) -> str:
    """sha256 of a model file, or of a folder's files (relative names and contents, in name order)."""
    digest = hashlib.sha256()
    if os.path.isdir(local):
        for folder, _dirs, files in sorted(os.walk(local)):
            for name in sorted(files):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, local).encode() + b"\0")
                _update_from_file(digest, path)
    else:
        _update_from_file(digest, local)
    return digest.hexdigest()


def _update_from_file(digest, path: str) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)


def _shape(shape: tuple) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"
