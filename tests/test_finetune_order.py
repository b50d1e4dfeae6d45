"""Training order at a scale where each class is many times one worker's shuffle buffer (real Ray Data, real digits)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.finetune.data import decode_split, epoch_order, list_training_files, shuffled, stream_split

BUFFER, BATCH, WORKERS = 8, 8, 2  # a class has 70-90 training images: about ten times one worker's buffer


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never attach to a neighbour
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    root = tmp_path_factory.mktemp("order")
    for i in [i for i in range(len(data.target)) if data.target[i] < 3][:300]:
        folder = root / str(data.target[i])
        folder.mkdir(exist_ok=True)
        Image.fromarray((data.images[i] / 16 * 255).astype(np.uint8), "L").save(folder / f"{i:04d}.png")
    return root


def _epoch_batches(dataset, seed: int) -> list[list[np.ndarray]]:
    """Each worker's batches of one epoch, read the way the training workers read them."""
    shards = dataset.split(WORKERS, equal=True)
    return [[batch["label"] for batch in shard.iter_batches(batch_size=BATCH, local_shuffle_buffer_size=BUFFER,
                                                             local_shuffle_seed=seed + rank)]
            for rank, shard in enumerate(shards)]


def _majority_share(batches: list[list[np.ndarray]]) -> float:
    """Mean share of a batch taken by its most common class: 1.0 when batches are single-class,
    about 0.55 for well-mixed batches of 8 from 3 equal classes."""
    flat = [labels for shard in batches for labels in shard if len(labels) == BATCH]
    return float(np.mean([np.bincount(labels).max() / len(labels) for labels in flat]))


def test_training_batches_mix_the_classes_though_a_class_is_many_buffers(ray_local, three_classes):
    files = list_training_files(str(three_classes), None, 0.2)
    assert min(sum(1 for _, label in files.train if label == c) for c in range(3)) >= 8 * BUFFER

    listed = decode_split(files.train, 32, BATCH, {})  # listing order: one class after another
    ours = decode_split(shuffled(files.train, 1234), 32, BATCH, {})
    listed_majority = _majority_share(_epoch_batches(listed.dataset, 1))
    first, second = (_epoch_batches(epoch_order(ours.dataset, 1234), 1000 * epoch) for epoch in (1, 2))
    print(f"share of a batch taken by its main class: listing order {listed_majority:.2f}, "
          f"ours {_majority_share(first):.2f} and {_majority_share(second):.2f}")
    # Class order matters at this scale: in listing order batches are mostly one class (0.80 measured)...
    assert listed_majority > 0.72
    # ...the seeded global order mixes them like random draws (0.48-0.52), with a new order each epoch.
    assert _majority_share(first) < 0.62 and _majority_share(second) < 0.62
    assert [b.tolist() for b in first[0]] != [b.tolist() for b in second[0]]
    # Every image is still seen once per epoch (equal shards drop at most WORKERS-1).
    seen = sum(len(labels) for shard in first for labels in shard)
    assert ours.count - WORKERS < seen <= ours.count


def _pixel_digests(dataset) -> list[tuple[int, str]]:
    return sorted((int(label), hashlib.sha256(image.tobytes()).hexdigest())
                  for batch in dataset.iter_batches(batch_size=64, batch_format="numpy")
                  for image, label in zip(batch["image"], batch["label"]))


def test_a_streamed_epoch_shuffles_the_paths_before_decoding_so_no_epoch_is_held_whole(ray_local, three_classes,
                                                                                      capsys):
    """The block shuffle is a barrier: it takes every block it orders before it passes one on. On decoded
    blocks that is every decoded image of the epoch in Ray's object store at once; on path blocks, nothing."""
    files = list_training_files(str(three_classes), None, 0.2)
    capsys.readouterr()
    stream_split(shuffled(files.train, 1234), 32, BATCH, {}).in_epoch_order(1234).explain()
    streamed = capsys.readouterr().out.split("-------- Physical Plan")[0]
    assert streamed.index("MapBatches(decode_good_rows)") < streamed.index("RandomizeBlockOrder"), streamed
    decode_split(shuffled(files.train, 1234), 32, BATCH, {}).in_epoch_order(1234).explain()
    once = capsys.readouterr().out.split("-------- Physical Plan")[0]  # the decoded blocks, already stored
    assert "RandomizeBlockOrder" in once and "decode_good_rows" not in once, once


def test_a_streamed_split_gives_the_same_images_every_epoch_and_leaves_out_one_gone_since(ray_local, three_classes,
                                                                                         tmp_path):
    """--decode every-epoch: nothing decoded is kept, so each read decodes again, and an image that decoded
    at the start but fails in a later epoch is left out of that epoch and reported, not fatal."""
    root = shutil.copytree(three_classes, tmp_path / "data")
    files = list_training_files(str(root), None, 0.2)
    order = shuffled(files.train, 1234)
    once = decode_split(order, 32, BATCH, {})
    streamed = stream_split(order, 32, BATCH, {})
    assert streamed.count == once.count == len(files.train) and streamed.failed == []
    assert _pixel_digests(streamed.dataset) == _pixel_digests(once.dataset)  # the same pixels and labels
    assert _majority_share(_epoch_batches(streamed.in_epoch_order(1234), 1)) < 0.62  # mixed as well

    gone = order[0][0]
    os.remove(gone)
    later = sum(len(batch["label"]) for batch in streamed.dataset.iter_batches(batch_size=64, batch_format="numpy"))
    assert later == streamed.count - 1
    assert [path for path, _ in streamed.failed_later()] == [gone]
    assert once.failed_later() == []
