"""The fine-tuning data: class-per-folder listing, a per-file hash split, and Ray Data decoding.

Images are decoded by ``pipeline.images`` (the labeling job's decoder) in a seeded random order, so every
block mixes the classes, and training workers read equal shards. ``--decode once`` decodes them once per run
into Ray's object store (which spills to local disk beyond its size); ``every-epoch`` streams them through
the decode tasks again in each epoch and keeps no decoded image between epochs; ``auto`` picks once while the decoded images take at most half the object store (``choose_decode``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from pipeline import storage
from pipeline.errors import UserError
from pipeline.fetch import DEFAULT_RETRIES, fetch_and_decode
from pipeline.images import use_one_opencv_thread
from pipeline.images import is_image_path

SHUFFLE_SEED = 1234  # default seed of the training order (--seed)
ROWS_PER_BLOCK = 64  # decoded rows per Ray block: small blocks make the per-epoch block shuffle fine-grained
MAX_BLOCKS = 4096
DECODE_MODES = ("auto", "once", "every-epoch")
ONCE_SHARE = 0.5  # auto decodes once when the decoded images take at most this share of Ray's object store
DECODE_CPUS = 1.0  # CPUs each decode task reserves; decoding every epoch needs them beside the workers'


@dataclass
class LabeledFiles:
    class_names: list[str]  # sorted folder names or table labels; index = label
    train: list[tuple[str, int]] = field(default_factory=list)  # (path or URL, label)
    val: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what a labels table held and left out, for the console


@dataclass(frozen=True)
class LabelsSource:
    """How to read DATA and --val when they are labels tables (pipeline.finetune.tables)."""

    path_column: str = "path"
    label_column: str = "label"
    min_score: float | None = None  # keep only rows a labeling model scored at least this


def read_labeled(location: str, source: LabelsSource, what: str = "DATA") -> tuple[dict[str, list[str]], list[str]]:
    """{class name: sorted image paths} from a labels table or a class-per-folder tree, and notes."""
    from pipeline.finetune.tables import read_labels_table, table_files

    files = table_files(location, what)
    if files is None:
        if source.min_score is not None:
            raise UserError(f"--min-score keeps the rows a labeling model scored at least S: {what} '{location}' "
                            "is a folder of class subfolders, not a labels table or a 'pipeline label' OUTPUT")
        return list_class_folders(location, what), []
    table = read_labels_table(files, location, source.path_column, source.label_column, source.min_score, what)
    return table.classes, table.notes(what, location)


def list_class_folders(root: str, what: str = "DATA") -> dict[str, list[str]]:
    """{class name: sorted image paths} for every subfolder of ``root``; UserError on a bad layout."""
    try:
        fs, base = storage.filesystem(root)
        if not fs.isdir(base):
            raise UserError(f"{what} '{root}' does not exist or is not a folder; it should hold one "
                            "subfolder of images per class (e.g. train/cats, train/dogs), or be a labels "
                            "table (CSV or Parquet with path and label columns)")
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
        raise UserError(f"{what} '{root}' needs at least two classes to learn from (found {found}); put each "
                        "class's images in its own subfolder, or pass a labels table (CSV or Parquet with "
                        "path and label columns)")
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise UserError(f"class folder(s) {', '.join(repr(n) for n in empty)} in {what} '{root}' hold no images "
                        "(.jpg, .png, ...); add images or remove the folder")


def split_key(path: str, class_name: str) -> float:
    """A number in [0, 1) fixed by the file's path from its class folder on (so DATA may move)."""
    start = path.rfind(f"/{class_name}/")
    relative = path[start + 1:] if start >= 0 else path
    digest = hashlib.sha256(relative.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hash_split(classes: dict[str, list[str]], val_fraction: float) -> LabeledFiles:
    """Hold out about ``val_fraction`` of every class, decided per file by a hash of its path.

    Adding or removing images never moves the other images between training and validation
    (a seeded permutation per class did: one new image reshuffled every later class). Each
    class keeps at least one image on each side.
    """
    names = sorted(classes)
    files = LabeledFiles(names)
    for label, name in enumerate(names):
        paths = classes[name]
        if len(paths) < 2:
            raise UserError(f"class '{name}' has {len(paths)} image; a validation split needs at least two "
                            "per class (or pass --val DIR)")
        keyed = sorted((split_key(p, name), p) for p in paths)
        n_val = sum(key < val_fraction for key, _ in keyed)
        n_val = min(len(paths) - 1, max(1, n_val))  # the lowest keys are validation
        files.val += [(p, label) for p in sorted(p for _, p in keyed[:n_val])]
        files.train += [(p, label) for p in sorted(p for _, p in keyed[n_val:])]
    return files


def split_digest(files: LabeledFiles) -> str:
    """A short digest of the class names and of which file is on which side: resume refuses a different one."""
    digest = hashlib.sha256()
    for part, items in (("classes", [(n, i) for i, n in enumerate(files.class_names)]),
                        ("train", files.train), ("val", files.val)):
        digest.update(part.encode())
        for path, label in items:
            digest.update(f"{label}\t{path}\n".encode("utf-8"))
    return digest.hexdigest()[:16]


def shuffled(items: list[tuple[str, int]], seed: int) -> list[tuple[str, int]]:
    """A seeded global permutation: listed files come one class after another, training must not."""
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order]


def list_training_files(data: str, val: str | None, val_fraction: float,
                        source: LabelsSource = LabelsSource()) -> LabeledFiles:
    """Training and validation files with labels; UserError names what is wrong with the folders or tables."""
    classes, notes = read_labeled(data, source)
    check_classes(classes, data)
    if val is None:
        files = hash_split(classes, val_fraction)
        files.notes = notes
        return files
    val_classes, val_notes = read_labeled(val, source, what="--val")
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise UserError(f"--val '{val}' has class(es) {unknown} that DATA '{data}' lacks")
    names = sorted(classes)
    files = LabeledFiles(names, notes=notes + val_notes)
    files.train = [(p, names.index(n)) for n in names for p in classes[n]]
    files.val = [(p, names.index(n)) for n in names for p in val_classes.get(n, [])]
    if not files.val:
        raise UserError(f"--val '{val}' holds no images")
    return files


def epoch_order(dataset: Any, seed: int) -> Any:
    """The training set with a new seeded block order every time it is read (every epoch).

    Together with decoding in ``shuffled`` order (every block mixes the classes) and each
    worker's local shuffle buffer, this is a global shuffle per epoch at block granularity
    that moves no data: cheap at a million images, unlike ``random_shuffle``.
    """
    from ray.data import RandomSeedConfig

    return dataset.randomize_block_order(seed=RandomSeedConfig(seed, reseed_after_execution=True))


def decode_batch(batch: dict[str, np.ndarray], size: int, storage_options: dict[str, Any],
                 resize_mode: str = "squash", retries: int = DEFAULT_RETRIES) -> dict[str, np.ndarray]:
    """Ray Data batch function: paths -> uint8 images (as labeling fits them: ``resize_mode``), fetched
    concurrently as labeling fetches them; ``error`` set for an image that cannot be used, ``transient``
    for one whose reads kept failing for a reason that may pass (throttling, 5xx, timeouts)."""
    use_one_opencv_thread()
    if storage_options:
        storage.set_storage_options(storage_options)
    fetched = fetch_and_decode([str(p) for p in batch["path"]], size, resize_mode, retries)
    return {"path": batch["path"], "label": batch["label"], "image": fetched.images,
            "error": np.array(fetched.errors, dtype=object), "transient": fetched.transient}


def decode_good_rows(batch: dict[str, np.ndarray], size: int, storage_options: dict[str, Any], resize_mode: str,
                     retries: int, failures: Any) -> dict[str, np.ndarray]:
    """``decode_batch``, keeping only the images that decoded (columns image and label); the others go to the
    ``failures`` actor, which this task waits on, so they are all there once the split has materialized."""
    import ray

    decoded = decode_batch(batch, size, storage_options, resize_mode, retries)
    keep = decoded["error"] == ""
    if not keep.all():
        ray.get(failures.add.remote([(str(path), str(error), bool(transient)) for path, error, transient
                                     in zip(decoded["path"][~keep], decoded["error"][~keep],
                                            decoded["transient"][~keep])]))
    return {"image": decoded["image"][keep], "label": decoded["label"][keep].astype(np.int32)}


class FailedImages:
    """(path, error, transient) of every image a decode task could not use, by path: a task Ray runs again
    reports its images again."""

    def __init__(self) -> None:
        self._failed: dict[str, tuple[str, bool]] = {}

    def add(self, rows: list[tuple[str, str, bool]]) -> None:
        for path, error, transient in rows:
            self._failed[path] = (error, transient)

    def rows(self) -> list[tuple[str, str, bool]]:
        return [(path, error, transient) for path, (error, transient) in sorted(self._failed.items())]


@dataclass
class DecodedSplit:
    dataset: Any  # ray.data.Dataset with columns image (uint8) and label (int32): materialized, or streamed
    count: int  # images that decoded
    failed: list[tuple[str, str]]  # (path, error) of the images skipped: they cannot be used
    transient: list[tuple[str, str]] = field(default_factory=list)  # (path, error) of reads that kept failing
    later: Any = None  # streamed: the FailedImages actor of images that decoded before but failed in an epoch
    decode_from: Callable[[Any], Any] | None = None  # streamed: a (path, label) Dataset -> its decoded Dataset
    paths: Any = None  # streamed: the (path, label) Dataset that ``dataset`` decodes

    def in_epoch_order(self, seed: int) -> Any:
        """The split in a new seeded block order each epoch (``epoch_order``). A streamed split shuffles its
        path blocks before they are decoded: the shuffle waits for every block it orders, so after the decode
        it would hold every decoded image of the epoch at once."""
        if self.decode_from is None:
            return epoch_order(self.dataset, seed)
        return self.decode_from(epoch_order(self.paths, seed))

    def failed_later(self) -> list[tuple[str, str]]:
        """(path, error) of the images an epoch left out because they failed then (streamed splits only)."""
        import ray

        if self.later is None:
            return []
        return [(path, error) for path, error, _ in ray.get(self.later.rows.remote())]


@dataclass(frozen=True)
class Decoding:
    mode: str  # once | every-epoch
    line: str  # what the console says about it


def choose_decode(mode: str, images: int, size: int, resources: dict[str, float], worker_cpus: float) -> Decoding:
    """How this run decodes (``mode``: once, every-epoch or auto), from the decoded size and the cluster."""
    decoded = images * size * size * 3
    store = resources.get("object_store_memory", 0.0)
    can_stream = resources.get("CPU", 0.0) - worker_cpus >= DECODE_CPUS
    what = f"{images:,} images at {size}x{size} take {decoded / 2**30:.2f} GiB"
    if mode == "every-epoch" and not can_stream:
        raise UserError(f"--decode every-epoch runs decode tasks ({DECODE_CPUS:g} CPU each) beside the training "
                        f"workers, but the cluster has {resources.get('CPU', 0.0):g} CPUs and the workers take "
                        f"{worker_cpus:g}; lower --workers or --cpus-per-worker, or use --decode once")
    if mode == "every-epoch":
        return Decoding(mode, f"decoding every epoch, streamed (none kept): {what}")
    if mode == "once" or decoded <= ONCE_SHARE * store or not can_stream:
        line = f"decoding once into Ray's object store: {what} of its {store / 2**30:.1f} GiB"
        if decoded > store:
            line += ", the rest spilled to local disk"
        if mode == "auto" and decoded > ONCE_SHARE * store:
            line += " (no CPU beside the workers' to decode every epoch)"
        return Decoding("once", line)
    return Decoding("every-epoch", f"decoding every epoch, streamed: {what}, more than half of Ray's "
                                   f"{store / 2**30:.1f} GiB object store")


def _path_dataset(items: list[tuple[str, int]]) -> Any:
    """(path, label) rows in blocks of about ``ROWS_PER_BLOCK``, the input of every decode pass."""
    import ray

    blocks = max(1, min(len(items) // ROWS_PER_BLOCK + 1, MAX_BLOCKS))
    return ray.data.from_items([{"path": p, "label": label} for p, label in items], override_num_blocks=blocks)


def failed_rows(batch: dict[str, np.ndarray], size: int, storage_options: dict[str, Any], resize_mode: str,
                retries: int) -> dict[str, np.ndarray]:
    """``decode_batch``, keeping only what failed (path, error, transient): the pixels are not kept."""
    decoded = decode_batch(batch, size, storage_options, resize_mode, retries)
    bad = decoded["error"] != ""
    return {"path": decoded["path"][bad], "error": decoded["error"][bad], "transient": decoded["transient"][bad]}


def stream_split(items: list[tuple[str, int]], size: int, batch_size: int,
                 storage_options: dict[str, Any], resize_mode: str = "squash",
                 retries: int = DEFAULT_RETRIES) -> DecodedSplit:
    """``items`` as a Dataset that decodes them again each time it is read (each epoch), holding no pixels.

    A first pass decodes every image once to find the ones that cannot be used (kept: path and error only),
    so the count, the skipped images and a storage outage are known before training, as with ``decode_split``.
    An image that fails in a later epoch is left out of that epoch (Ray Train's equal split keeps the
    workers in step) and reported with ``DecodedSplit.failed_later``.
    """
    import ray

    options = {"size": size, "storage_options": storage_options, "resize_mode": resize_mode, "retries": retries}
    found = _path_dataset(items).map_batches(failed_rows, fn_kwargs=options, batch_size=max(batch_size, 32),
                                             batch_format="numpy", num_cpus=DECODE_CPUS).materialize()
    failed, transient = [], []
    for row in found.iter_rows():
        (transient if row["transient"] else failed).append((row["path"], row["error"]))
    unusable = {path for path, _ in failed + transient}
    good = [(p, label) for p, label in items if p not in unusable]
    later = ray.remote(num_cpus=0)(FailedImages).remote()

    def decode_from(paths: Any) -> Any:
        return paths.map_batches(decode_good_rows, fn_kwargs={**options, "failures": later},
                                 batch_size=max(batch_size, 32), batch_format="numpy", num_cpus=DECODE_CPUS)

    paths = _path_dataset(good)
    return DecodedSplit(decode_from(paths), len(good), sorted(failed), sorted(transient), later, decode_from, paths)


def decode_split(items: list[tuple[str, int]], size: int, batch_size: int,
                 storage_options: dict[str, Any], resize_mode: str = "squash",
                 retries: int = DEFAULT_RETRIES) -> DecodedSplit:
    """Decode ``items`` once with Ray Data into Ray's object store, holding only the images that decoded (so
    the pixels are stored once); corrupt images are reported and skipped, never fatal."""
    import ray

    failures = ray.remote(num_cpus=0)(FailedImages).remote()
    good = _path_dataset(items).map_batches(decode_good_rows,
                                            fn_kwargs={"size": size, "storage_options": storage_options,
                                                       "resize_mode": resize_mode, "retries": retries,
                                                       "failures": failures},
                                            batch_size=max(batch_size, 32), batch_format="numpy",
                                            num_cpus=DECODE_CPUS).materialize()
    failed, transient = [], []
    for path, error, is_transient in ray.get(failures.rows.remote()):
        (transient if is_transient else failed).append((path, error))
    ray.kill(failures)
    return DecodedSplit(good, good.count(), failed, transient)
