"""Fine-tuning with real Ray Train and real TF: data parallelism is exact, the export is the best epoch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def _digit_folders(root: Path, per_class: dict[int, int], skip: int = 0) -> Path:
    """Real scikit-learn digits as 32x32 PNGs, ``per_class[c]`` of class c, after skipping ``skip`` of each."""
    from sklearn.datasets import load_digits

    data = load_digits()
    for digit, count in per_class.items():
        folder = root / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        indices = [i for i in range(len(data.target)) if data.target[i] == digit][skip:skip + count]
        for i in indices:
            pixels = (data.images[i] / 16.0 * 255).astype(np.uint8)
            Image.fromarray(pixels, "L").resize((32, 32), Image.Resampling.BILINEAR).save(folder / f"{i:04d}.png")
    return root


def _weights(location: Path) -> list[np.ndarray]:
    from pipeline.models.artifact import load_artifact_model

    return [np.asarray(w) for w in load_artifact_model(str(location)).get_weights()]


@pytest.mark.slow
def test_one_step_with_one_worker_equals_one_step_with_two_and_with_images_decoded_every_epoch(tmp_path):
    train = _digit_folders(tmp_path / "train", {0: 8, 1: 8})  # 16 images: one global batch
    good = (train / "1").glob("*.png").__next__().read_bytes()
    (train / "1" / "corrupt.png").write_bytes(good[: len(good) // 2])  # skipped by every run
    val = _digit_folders(tmp_path / "val", {0: 2, 1: 2}, skip=8)
    common = ["--val", str(val), "--epochs", "1", "--image-size", "32", "--augment", "none", "--dropout", "0",
              "--lr", "1e-2", "--lr-schedule", "constant", "--seed", "7"]
    runs = {"w1": ["--workers", "1", "--batch-size", "16", "--decode", "once"],
            "w2": ["--workers", "2", "--batch-size", "8"],  # 2 workers take both CPUs here: auto decodes once
            "streamed": ["--workers", "1", "--batch-size", "16", "--decode", "every-epoch"]}
    for name, options in runs.items():
        result = runner.invoke(app, ["finetune", str(train), str(tmp_path / name), *options, *common])
        assert result.exit_code == 0, result.output
        assert "1 unreadable image skipped" in result.stdout
        with open(tmp_path / name / "history.csv", newline="") as f:
            assert [row["train_images"] for row in csv.DictReader(f)] == ["16"]  # one step on all 16 images
    assert "decoding every epoch, streamed" in result.output
    one = _weights(tmp_path / "w1")
    bias = one[-1]
    assert np.abs(bias).min() > 1e-3, "the step did not move the new head (its bias starts at zero)"
    for other in ("w2", "streamed"):  # the same gradient: the same images, labels and global batch
        weights = _weights(tmp_path / other)
        assert len(one) == len(weights)
        for a, b in zip(one, weights):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_exported_model_is_the_best_epoch_not_the_last_and_patience_stops(tmp_path):
    train = _digit_folders(tmp_path / "train", {0: 40, 1: 40, 2: 40})
    val = _digit_folders(tmp_path / "val", {0: 12, 1: 12, 2: 12}, skip=40)
    output = tmp_path / "model"
    # A learning rate far too high: validation accuracy jumps around, so the best epoch is rarely the last.
    result = runner.invoke(app, ["finetune", str(train), str(output), "--val", str(val), "--workers", "1",
                                 "--epochs", "6", "--image-size", "32", "--augment", "none", "--lr", "0.3",
                                 "--lr-schedule", "constant", "--batch-size", "16", "--patience", "2"])
    assert result.exit_code == 0, result.output
    with open(output / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    accuracies = [float(row["val_accuracy"]) for row in history]
    chosen = [int(row["epoch"]) for row in history if row["exported"] == "1"]
    assert chosen == [int(np.argmax(accuracies)) + 1]  # the first epoch with the best validation accuracy
    # --patience 2: the run ends right after the second epoch in a row without a better val_accuracy.
    best, stale, expected_epochs = -1.0, 0, 6
    for epoch, accuracy in enumerate(accuracies, start=1):
        best, stale = (accuracy, 0) if accuracy > best else (best, stale + 1)
        if stale == 2:
            expected_epochs = epoch
            break
    assert len(history) == expected_epochs, accuracies
    assert ("(stopped early)" in result.stdout) == (expected_epochs < 6)
    assert f"exported epoch {chosen[0]} (best val_accuracy)" in result.stdout
    meta = json.loads((output / "pipeline_model.json").read_text())
    assert meta["epoch"] == chosen[0]

    # Directly: the exported weights are the best epoch's, saved in the last checkpoint, not its current ones.
    from pipeline.finetune.model import build_classifier
    from pipeline.finetune.worker import WEIGHTS_FILE, read_best_weights

    last = sorted((output / "checkpoints").glob("epoch_*"))[-1]
    exported = _weights(output)
    for a, b in zip(exported, read_best_weights(str(last))):
        np.testing.assert_array_equal(a, b)
    if chosen[0] != len(history):
        final = build_classifier("efficientnet_lite0", 32, 3, weights=None)
        final.load_weights(str(last / WEIGHTS_FILE))
        assert any(not np.array_equal(a, b) for a, b in zip(exported, final.get_weights()))

    # And through labeling: the exported model scores on the validation images what the chosen epoch scored.
    import pipeline

    paths = sorted(str(p) for p in val.rglob("*.png"))
    labels = [p.label for p in pipeline.classify(paths, model=str(output), top_k=1)]
    accuracy = float(np.mean([Path(p).parent.name == label for p, label in zip(paths, labels)]))
    assert accuracy == pytest.approx(accuracies[chosen[0] - 1], abs=1.01 / len(paths))
    print(f"val accuracy per epoch {accuracies}; exported epoch {chosen[0]}; through classify {accuracy:.4f}")
    # The report files a user looks at next.
    with open(output / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["class"] for row in rows] == ["0", "1", "2"] and [row["support"] for row in rows] == ["12"] * 3
    assert (output / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "most confused (true->predicted):" in result.stdout


@pytest.mark.slow
def test_center_crop_training_is_exported_and_labeling_defaults_to_it_with_embeddings(photo_dir, tmp_path):
    train = _digit_folders(tmp_path / "train", {0: 6, 1: 6})
    model = tmp_path / "model"
    result = runner.invoke(app, ["finetune", str(train), str(model), "--workers", "1", "--epochs", "1",
                                 "--image-size", "32", "--augment", "none", "--val-fraction", "0.34",
                                 "--resize", "center-crop"])
    assert result.exit_code == 0, result.output
    assert json.loads((model / "pipeline_model.json").read_text())["resize"] == "center-crop"

    # No --resize: the artifact's own mode; the fine-tuned model's pooled features are the base's 1280.
    out = tmp_path / "labels"
    labeled = runner.invoke(app, ["label", str(photo_dir), str(out), "--model", str(model), "--embeddings"])
    assert labeled.exit_code == 0, labeled.output
    assert json.loads((out / "_pipeline_manifest.json").read_text())["resize_mode"] == "center-crop"
    import pandas as pd

    frame = pd.read_parquet(out)
    assert len(frame) == 4 and frame["label"].isin(["0", "1"]).all()
    assert {len(vector) for vector in frame["embedding"]} == {1280}

    # An explicit other mode is allowed, said, and recorded; a resume that changes it is refused.
    squashed = tmp_path / "squashed"
    labeled = runner.invoke(app, ["label", str(photo_dir), str(squashed), "--model", str(model), "--resize", "squash"])
    assert labeled.exit_code == 0, labeled.output
    assert "was fine-tuned with --resize center-crop" in labeled.output
    assert json.loads((squashed / "_pipeline_manifest.json").read_text())["resize_mode"] == "squash"
    refused = runner.invoke(app, ["label", str(photo_dir), str(squashed), "--model", str(model), "--resume"])
    assert refused.exit_code == 2
    assert "resize-mode: OUTPUT has 'squash', this run has 'center-crop'" in refused.output
