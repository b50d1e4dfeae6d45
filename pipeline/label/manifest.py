"""The run manifest in OUTPUT: what makes its rows comparable, so a resume cannot mix two models.

``_pipeline_manifest.json`` records the model identity (name or artifact, plus a
sha256 of the weights the predictors actually loaded), top-k, input size and
resize, whether rows carry embeddings, the package version and the source. It is
written whole (temp file and rename locally, one PUT on object stores) before the
first part file; a resume whose settings differ is refused with the difference named.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from pipeline import storage
from pipeline.errors import UserError
from pipeline.results import MANIFEST_NAME
from pipeline.storage_retry import DEFAULT_RETRIES, StorageError, with_retries

MANIFEST_FORMAT = 1
# How feed.py/images.py turn a file into model input; change it when the decoder's output changes.
RESIZE = ("RGB, EXIF-oriented, first frame; squashed to size x size (aspect ratio not kept), "
          "shrunk by bilinear to twice the size then 2x2 area averaging (area averaging past 2.5x), "
          "bilinear when enlarging; JPEGs DCT-scaled first at 1/8, 1/4, 1/2 or 1/1")
# Fields that, when they differ, would give rows that are not comparable with the ones already written.
# ``resize`` describes the decoder and changes when the pixels it gives a model would. The source is
# recorded, not compared: it decides which images, not what their rows hold, so a resume may finish a job
# from another listing of the same images (a list file of the ones left, say). The package version is
# recorded, not compared: an upgrade that changes no row must not strand a half-done multi-day run.
COMPARED = ("model", "weights", "model_identity", "weights_digest", "top_k", "input_size", "resize",
            "resize_mode", "precision", "xla", "embeddings")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("keras-ray-pipeline")
    except PackageNotFoundError:
        return "unknown"


def weights_digest(keras_model: Any) -> str:
    """sha256 over every weight array (shape, dtype, bytes) in the model's own order."""
    digest = hashlib.sha256()
    for array in keras_model.get_weights():
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return "sha256:" + digest.hexdigest()


@dataclass
class RunManifest:
    model: str  # registry name or fine-tuned artifact location
    weights: str  # imagenet | none | weights file path/URL, as given
    top_k: int  # classes kept per row
    input_size: int  # images are resized to input_size x input_size
    source: str  # SOURCE of the run that created OUTPUT, as given
    weights_digest: str | None = None  # sha256 of the loaded weights; known once the first rows arrive
    model_identity: dict | None = None  # pipeline.models.resolved.ResolvedModel.identity: kind, file digests, head, classes
    resize_mode: str = "squash"  # squash | center-crop
    precision: str = "float32"  # float32 | mixed: float16 compute changes scores in the last digits
    xla: bool = False  # XLA compilation may reorder float arithmetic
    embeddings: bool = False  # rows carry the 'embedding' column (--embeddings): one schema per OUTPUT
    resize: str = RESIZE
    package_version: str = field(default_factory=package_version)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # tags every part file of this OUTPUT
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    format: int = MANIFEST_FORMAT

    def differences(self, other: "RunManifest") -> list[str]:
        """'name: OUTPUT has X, this run has Y' for each compared field that differs (unknown digests match)."""
        found = []
        for name in COMPARED:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name == "weights_digest" and (mine is None or theirs is None):
                continue
            if mine != theirs:
                found.append(f"{name.replace('_', '-')}: OUTPUT has {mine!r}, this run has {theirs!r}")
        return found

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    def lines(self) -> list[str]:
        """Human-readable 'key: value' lines for ``pipeline show``: a nested dict (the model identity) as
        indented 'key: value' lines of its own, lists joined with commas."""
        return list(_key_value_lines(asdict(self)))


def _key_value_lines(values: dict, indent: str = "") -> Iterator[str]:
    for key, value in values.items():
        if isinstance(value, dict):
            yield f"{indent}{key}:"
            yield from _key_value_lines(value, indent + "  ")
        elif isinstance(value, (list, tuple)):
            shown = ", ".join(str(v) for v in value[:LIST_ITEMS_SHOWN])
            more = f", ... ({len(value)} in all)" if len(value) > LIST_ITEMS_SHOWN else ""
            yield f"{indent}{key}: {shown}{more}"
        else:
            yield f"{indent}{key}: {value}"


LIST_ITEMS_SHOWN = 10  # e.g. a fine-tuned model's class names


def manifest_path(output: str) -> str:
    return storage.join(output, MANIFEST_NAME)


def read_manifest(output: str, retries: int = DEFAULT_RETRIES) -> RunManifest | None:
    """The manifest in ``output``, None if there is none; UserError naming the file if it is damaged."""
    location = manifest_path(output)
    fs, path = storage.filesystem(location)

    def read() -> bytes:
        with fs.open(path, "rb") as f:
            return f.read()

    try:
        data = json.loads(with_retries("read the run manifest", location, read, retries))
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {MANIFEST_FORMAT}")
        return RunManifest(**data)
    except FileNotFoundError:
        return None
    except StorageError:
        raise
    except Exception as err:  # noqa: BLE001 - JSON, missing or extra keys: all mean a damaged file
        raise UserError(f"run manifest '{location}' is damaged ({type(err).__name__}: {err}); "
                        "use --overwrite to start OUTPUT again, or choose another OUTPUT") from err


def write_manifest(output: str, manifest: RunManifest, retries: int = DEFAULT_RETRIES) -> None:
    """Publish the manifest whole: a rename locally, one PUT on object stores (never a streamed upload)."""
    location = manifest_path(output)
    data = manifest.to_json()
    with_retries("write the run manifest", location, lambda: storage.publish(location, data), retries)
