"""DATA as a labels table: CSV and Parquet files, folders and globs of them, and a `pipeline label` OUTPUT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import UserError
from pipeline.finetune.data import LabelsSource, list_training_files

runner = CliRunner()


def _images(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        Image.fromarray(np.full((8, 8, 3), i * 9 % 255, np.uint8)).save(folder / f"img{i:03d}.png")
        names.append(f"img{i:03d}.png")
    return names


def test_a_csv_with_relative_paths_and_numeric_labels(tmp_path):
    names = _images(tmp_path / "images", 12)
    rows = [{"file": f"images/{n}", "digit": i % 3} for i, n in enumerate(names)]
    rows += [{"file": "images/img000.png", "digit": 2},  # the same image again: the first label is kept
             {"file": "images/img001.png", "digit": None}]  # no label
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    files = list_training_files(str(tmp_path / "labels.csv"), None, 0.25, LabelsSource("file", "digit"))
    assert files.class_names == ["0", "1", "2"]
    every = sorted(files.train + files.val)
    assert len(every) == 12 and (str(tmp_path / "images" / "img000.png"), 0) in every
    assert files.notes == [f"DATA '{tmp_path / 'labels.csv'}': 14 rows in 1 table file, left out: 1 row without a "
                           "label; 1 row naming an image again"]


def test_a_folder_or_glob_of_parquet_tables_with_a_separate_val_table(tmp_path):
    names = _images(tmp_path / "images", 8)
    root = str(tmp_path / "images")
    for part, chunk in enumerate((names[:3], names[3:6])):
        pd.DataFrame({"path": [f"{root}/{n}" for n in chunk], "label": ["cat", "dog", "cat"]}).to_parquet(
            tmp_path / f"train-{part}.parquet")
    pd.DataFrame({"path": [f"{root}/{n}" for n in names[6:]], "label": ["cat", "dog"]}).to_csv(tmp_path / "val.csv")
    for data in (str(tmp_path / "train-*.parquet"),):
        files = list_training_files(data, str(tmp_path / "val.csv"), 0.2)
        assert files.class_names == ["cat", "dog"] and len(files.train) == 6 and len(files.val) == 2
    (tmp_path / "tables").mkdir()
    for p in tmp_path.glob("train-*.parquet"):
        p.rename(tmp_path / "tables" / p.name)
    assert len(list_training_files(str(tmp_path / "tables"), None, 0.3).train
               + list_training_files(str(tmp_path / "tables"), None, 0.3).val) == 6


def test_a_missing_column_or_a_score_filter_without_scores_is_refused_naming_the_option(tmp_path):
    pd.DataFrame({"path": ["a.png", "b.png"], "class": ["x", "y"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(UserError, match=r"no 'label' column \(it has: path, class\); name the right one with --label-column"):
        list_training_files(str(tmp_path / "t.csv"), None, 0.2)
    with pytest.raises(UserError, match="--min-score needs a 'score' column"):
        list_training_files(str(tmp_path / "t.csv"), None, 0.2, LabelsSource(label_column="class", min_score=0.5))
    (tmp_path / "classes" / "x").mkdir(parents=True)
    with pytest.raises(UserError, match="--min-score keeps the rows a labeling model scored"):
        list_training_files(str(tmp_path / "classes"), None, 0.2, LabelsSource(min_score=0.5))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="is a file but not a labels table"):
        list_training_files(str(tmp_path / "notes.txt"), None, 0.2)


def _three_digit_images(root: Path, per_class: int) -> list[tuple[str, str]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    rows = []
    for digit in range(3):
        for i in np.flatnonzero(data.target == digit)[:per_class]:
            path = root / f"{i:04d}.png"  # one flat folder: the labels live only in the table
            pixels = (data.images[i] / 16.0 * 255).astype(np.uint8)
            Image.fromarray(pixels, "L").resize((32, 32), Image.Resampling.BILINEAR).save(path)
            rows.append((path.name, str(digit)))
    return rows


def _flat_digits_table(tmp_path: Path, path_column: str, label_column: str) -> tuple[Path, list[tuple[str, str]]]:
    """60 digits in one flat folder, with their labels in labels.csv beside them."""
    images = tmp_path / "flat"
    images.mkdir()
    rows = _three_digit_images(images, 20)
    pd.DataFrame(rows, columns=[path_column, label_column]).to_csv(images / "labels.csv", index=False)
    return images, rows


COMMON = ["--workers", "1", "--image-size", "32", "--batch-size", "16", "--augment", "none"]


@pytest.fixture(scope="module")
def tuned_on_csv(tmp_path_factory) -> tuple[Path, list[tuple[str, str]], Path, str]:
    """A model fine-tuned on labels.csv (columns 'file' and 'truth') of 60 digits in one flat folder: the
    folder, its rows, the model and the command's output."""
    tmp_path = tmp_path_factory.mktemp("tuned_on_csv")
    images, rows = _flat_digits_table(tmp_path, "file", "truth")
    first = runner.invoke(app, ["finetune", str(images / "labels.csv"), str(tmp_path / "m1"), "--path-column",
                                "file", "--label-column", "truth", "--epochs", "3", "--lr", "3e-3", *COMMON])
    assert first.exit_code == 0, first.output
    return images, rows, tmp_path / "m1", first.output


@pytest.mark.slow
def test_finetune_on_a_csv_then_on_the_confident_rows_of_its_own_labeling_output(tuned_on_csv, tmp_path):
    images, _, model, output = tuned_on_csv
    assert "60 rows in 1 table file" in output
    assert json.loads((model / "pipeline_model.json").read_text())["class_names"] == ["0", "1", "2"]

    labeled = tmp_path / "labels"
    result = runner.invoke(app, ["label", str(images), str(labeled), "--model", str(model)])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(labeled)
    # A cut that leaves some rows out and keeps at least two classes of at least two images (the split needs them).
    def usable(cut: float) -> bool:
        counts = frame[frame["score"] >= cut]["label"].value_counts()
        return len(counts) >= 2 and counts.min() >= 2
    threshold = next(float(cut) for cut in sorted(frame["score"].unique())[1:] if usable(cut))
    kept = int((frame["score"] >= threshold).sum())
    assert kept < 60
    second = runner.invoke(app, ["finetune", str(labeled), str(tmp_path / "m2"), "--min-score", repr(threshold),
                                 "--epochs", "3", "--lr", "3e-3", *COMMON])
    assert second.exit_code == 0, second.output
    assert f"left out: {60 - kept} row" in second.output  # the rows under --min-score, counted
    history = pd.read_csv(tmp_path / "m2" / "history.csv")
    assert int(history["train_images"].iloc[0]) + int(history["val_images"].iloc[0]) == kept


def test_a_table_on_s3_names_its_images_relative_to_its_own_prefix(s3_behind_proxy):
    from conftest import BUCKET

    from pipeline import storage

    direct, _, options = s3_behind_proxy
    prefix = f"{BUCKET}/tables-test"
    for i in range(6):
        direct.pipe(f"{prefix}/img/{i}.png", b"x")
    direct.pipe(f"{prefix}/labels.csv", "path,label\n" + "".join(f"img/{i}.png,{'ab'[i % 2]}\n" for i in range(6)))
    storage.set_storage_options(options)
    files = list_training_files(f"s3://{prefix}/labels.csv", None, 0.34)
    assert files.class_names == ["a", "b"]
    assert sorted(p for p, _ in files.train + files.val) == [f"s3://{prefix}/img/{i}.png" for i in range(6)]


@pytest.mark.slow
def test_a_fine_tuned_model_as_base_keeps_its_head_for_the_same_classes_and_gets_a_new_one_otherwise(
        tuned_on_csv, tmp_path):
    images, rows, m1, _ = tuned_on_csv
    exported = pd.read_csv(m1 / "history.csv").query("exported == 1").iloc[0]

    # The same classes, a learning rate too small to move anything: epoch 1 scores what m1 scored.
    again = runner.invoke(app, ["finetune", str(images / "labels.csv"), str(tmp_path / "m2"), "--path-column",
                                "file", "--label-column", "truth", "--base", str(m1), "--epochs", "1", "--lr", "1e-9",
                                *COMMON])
    assert again.exit_code == 0, again.output
    assert "the same 3 classes, so its head is kept" in again.output
    continued = pd.read_csv(tmp_path / "m2" / "history.csv").iloc[0]
    assert continued["val_accuracy"] == pytest.approx(exported["val_accuracy"], abs=1e-6)
    meta = json.loads((tmp_path / "m2" / "pipeline_model.json").read_text())
    assert meta["training"]["started_from"] == str(m1) and meta["base"] == "efficientnet_lite0"

    renamed = tmp_path / "renamed.csv"  # the same images, named from elsewhere: relative to the flat folder
    pd.DataFrame([(str(images / p), f"digit {label}") for p, label in rows],
                 columns=["path", "label"]).to_csv(renamed, index=False)
    other = runner.invoke(app, ["finetune", str(renamed), str(tmp_path / "m3"), "--base", str(m1),
                                "--epochs", "1", *COMMON])
    assert other.exit_code == 0, other.output
    assert "its backbone with a new head for these 3 classes" in other.output
    assert json.loads((tmp_path / "m3" / "pipeline_model.json").read_text())["class_names"] == [
        "digit 0", "digit 1", "digit 2"]
    unknown = runner.invoke(app, ["finetune", str(renamed), str(tmp_path / "m4"), "--base", "resnet5"])
    assert unknown.exit_code == 2 and "did you mean resnet50" in unknown.output
