"""The fine-tuning data: class-per-folder listing, a seeded stratified split, and Ray Data decoding.

Images are decoded by ``pipeline.images`` (the labeling job's decoder), once per
run, into Ray's object store; training workers then read equal shards of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.errors import UserError
from pipeline.images import decode_or_error, is_image_path

SPLIT_SEED = 1234  # fixed so a resumed run validates on the same images


@dataclass
class LabeledFiles:
    class_names: list[str]  # sorted folder names; index = label
    train: list[tuple[str, int]] = field(default_factory=list)  # (path or URL, label)
    val: list[tuple[str, int]] = field(default_factory=list)


def list_class_folders(root: str, what: str = "DATA") -> dict[str, list[str]]:
    """{class name: sorted image paths} for every subfolder of ``root``; UserError on a bad layout."""
    try:
        fs, base = storage.filesystem(root)
        if not fs.isdir(base):
            raise UserError(f"{what} '{root}' does not exist or is not a folder; it should hold one "
                            "subfolder of images per class (e.g. train/cats, train/dogs)")
        entries = fs.ls(base, detail=True)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - any storage failure is the user's to fix
        raise UserError(f"cannot read {what} '{root}': {type(err).__name__}: {err}") from err
    classes: dict[str, list[str]] = {}
    for entry in sorted(entries, key=lambda e: e["name"]):
        if entry["type"] != "directory":
            continue
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("."):
            continue
        files = sorted(p for p in fs.find(entry["name"]) if is_image_path(p))
        classes[name] = [storage.full_url(fs, p, root) for p in files]
    return classes


def check_classes(classes: dict[str, list[str]], root: str, what: str = "DATA") -> None:
    if len(classes) < 2:
        found = f"only '{next(iter(classes))}'" if classes else "none"
        raise UserError(f"{what} '{root}' needs at least two class subfolders to learn from (found {found}); "
                        "put each class's images in its own subfolder")
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise UserError(f"class folder(s) {', '.join(repr(n) for n in empty)} in {what} '{root}' hold no images "
                        "(.jpg, .png, ...); add images or remove the folder")


def stratified_split(classes: dict[str, list[str]], val_fraction: float,
                     seed: int = SPLIT_SEED) -> LabeledFiles:
    """Hold out ``val_fraction`` of every class (at least one image, never all), the same way every run."""
    names = sorted(classes)
    files = LabeledFiles(names)
    rng = np.random.default_rng(seed)
    for label, name in enumerate(names):
        paths = classes[name]
        if len(paths) < 2:
            raise UserError(f"class '{name}' has {len(paths)} image; a validation split needs at least two "
                            "per class (or pass --val DIR)")
        order = rng.permutation(len(paths))
        n_val = min(len(paths) - 1, max(1, int(round(len(paths) * val_fraction))))
        files.val += [(paths[i], label) for i in sorted(order[:n_val])]
        files.train += [(paths[i], label) for i in sorted(order[n_val:])]
    return files


def list_training_files(data: str, val: str | None, val_fraction: float) -> LabeledFiles:
    """Training and validation files with labels; UserError names what is wrong with the folders."""
    classes = list_class_folders(data)
    check_classes(classes, data)
    if val is None:
        return stratified_split(classes, val_fraction)
    val_classes = list_class_folders(val, what="--val")
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise UserError(f"--val '{val}' has class folder(s) {unknown} that DATA '{data}' lacks")
    names = sorted(classes)
    files = LabeledFiles(names)
    files.train = [(p, names.index(n)) for n in names for p in classes[n]]
    files.val = [(p, names.index(n)) for n in names for p in val_classes.get(n, [])]
    if not files.val:
        raise UserError(f"--val '{val}' holds no images")
    return files


def decode_batch(batch: dict[str, np.ndarray], size: int, storage_options: dict[str, Any]) -> dict[str, np.ndarray]:
    """Ray Data batch function: paths -> uint8 images; an unreadable file gets ``error`` set."""
    if storage_options:
        storage.set_storage_options(storage_options)
    images = np.zeros((len(batch["path"]), size, size, 3), np.uint8)
    errors = []
    for i, path in enumerate(batch["path"]):
        try:
            data = storage.read_bytes(str(path))
        except Exception as err:  # noqa: BLE001 - one unreadable file must not stop the run
            errors.append(f"unreadable: {type(err).__name__}: {err}")
            continue
        result = decode_or_error(data, (size, size))
        if result.image is not None:
            images[i] = result.image
        errors.append(result.error or "")
    return {"path": batch["path"], "label": batch["label"], "image": images, "error": np.array(errors, dtype=object)}


def drop_failed(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    keep = batch["error"] == ""
    return {"image": batch["image"][keep], "label": batch["label"][keep].astype(np.int32)}


@dataclass
class DecodedSplit:
    dataset: Any  # materialized ray.data.Dataset with columns image (uint8) and label (int32)
    count: int  # images that decoded
    failed: list[tuple[str, str]]  # (path, error) of the images skipped


def decode_split(items: list[tuple[str, int]], size: int, batch_size: int,
                 storage_options: dict[str, Any]) -> DecodedSplit:
    """Decode ``items`` once with Ray Data; corrupt images are dropped and reported, never fatal."""
    import ray

    blocks = max(1, min(len(items) // 64 + 1, 64))
    decoded = ray.data.from_items([{"path": p, "label": label} for p, label in items],
                                  override_num_blocks=blocks)
    decoded = decoded.map_batches(decode_batch, fn_kwargs={"size": size, "storage_options": storage_options},
                                  batch_size=max(batch_size, 32), batch_format="numpy", num_cpus=1).materialize()
    failed = [(r["path"], r["error"]) for r in decoded.select_columns(["path", "error"]).iter_rows() if r["error"]]
    good = decoded.map_batches(drop_failed, batch_format="numpy", num_cpus=1).materialize()
    return DecodedSplit(good, good.count(), failed)
