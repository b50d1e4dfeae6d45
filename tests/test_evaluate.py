"""`pipeline evaluate`: a real labeling OUTPUT scored against class folders and a labels table."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, photos):
    """Class folders named by what the default model calls each photo, one photo deliberately misfiled, one broken."""
    tree = tmp_path_factory.mktemp("truth")
    for folder, photo in (("Egyptian cat", "chelsea"), ("espresso", "coffee"), ("espresso", "rocket")):
        (tree / folder).mkdir(exist_ok=True)
        (tree / folder / f"{photo}.png").write_bytes(photos[photo].read_bytes())
    (tree / "espresso" / "broken.png").write_bytes(photos["coffee"].read_bytes()[:300])
    output = tmp_path_factory.mktemp("evaluate") / "labels"
    result = runner.invoke(app, ["label", str(tree), str(output), "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    return tree, output


@pytest.mark.slow
def test_scores_against_class_folders_and_counts_what_it_cannot_score(labeled, tmp_path):
    tree, output = labeled
    (tree / "espresso" / "never_labeled.png").write_bytes((tree / "espresso" / "coffee.png").read_bytes())
    try:
        result = runner.invoke(app, ["evaluate", str(output), "--truth", str(tree), "--out", str(tmp_path / "eval")])
    finally:
        (tree / "espresso" / "never_labeled.png").unlink()
    assert result.exit_code == 0, result.output
    predicted = pd.read_parquet(output).set_index("path")["label"]
    rocket = predicted[str(tree / "espresso" / "rocket.png")]
    assert rocket != "espresso"  # the misfiled photo: wrong by construction
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images_scored"] == 3 and metrics["accuracy"] == pytest.approx(2 / 3)
    assert (metrics["no_prediction"], metrics["failed"], metrics["no_truth"]) == (1, 1, 0)
    assert metrics["most_confused"] == [["espresso", rocket, 1]]
    assert "accuracy 0.6667, top-5 " in result.output and "1 row failed in labeling" in result.output
    per_class = pd.read_csv(tmp_path / "eval" / "per_class.csv").set_index("class")
    assert per_class.loc["espresso", "recall"] == pytest.approx(0.5) and per_class.loc["espresso", "support"] == 2
    assert per_class.loc["Egyptian cat", "f1"] == pytest.approx(1.0)
    confusion = pd.read_csv(tmp_path / "eval" / "confusion_matrix.csv").set_index("true class")
    assert confusion.loc["espresso", rocket] == 1 and confusion.loc["espresso", "espresso"] == 1
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    # The same numbers from pandas alone: join on the path, score the rows that have both and no error.
    frame = pd.read_parquet(output)
    frame["truth"] = [p.rsplit("/", 2)[-2] for p in frame["path"]]
    scored = frame[frame["error"].isna()]
    assert metrics["accuracy"] == (scored["label"] == scored["truth"]).mean()
    recall = scored.assign(right=scored["label"] == scored["truth"]).groupby("truth")["right"].mean()
    assert per_class["recall"].to_dict() == recall.to_dict()


@pytest.mark.slow
def test_a_labels_table_as_truth_and_two_outputs_side_by_side(labeled, tmp_path):
    tree, output = labeled
    table = tmp_path / "truth.csv"
    pd.DataFrame({"file": [str(tree / "Egyptian cat" / "chelsea.png"), str(tree / "espresso" / "coffee.png"),
                           str(tree / "espresso" / "rocket.png")],
                  "truth": ["tabby", "espresso", "space shuttle"]}).to_csv(table, index=False)
    result = runner.invoke(app, ["evaluate", str(output), str(output), "--truth", str(table), "--path-column", "file",
                                 "--label-column", "truth", "--out", str(tmp_path / "both")])
    assert result.exit_code == 0, result.output
    first = json.loads((tmp_path / "both" / "01" / "metrics.json").read_text())
    assert first["images_scored"] == 3 and first["no_truth"] == 1  # broken.png has a row but no truth
    assert (tmp_path / "both" / "02" / "metrics.json").exists()
    assert "PREDICTIONS" in result.output and result.output.count(str(output)) >= 4


@pytest.mark.slow
def test_a_truth_without_the_label_column_is_refused_naming_the_option(labeled, tmp_path):
    _, output = labeled
    pd.DataFrame({"path": ["a.png", "b.png"], "class": ["x", "y"]}).to_csv(tmp_path / "t.csv", index=False)
    result = runner.invoke(app, ["evaluate", str(output), "--truth", str(tmp_path / "t.csv")])
    assert result.exit_code == 2 and "--label-column" in result.output
    missing = runner.invoke(app, ["evaluate", str(tmp_path / "nothing"), "--truth", str(tmp_path / "t.csv"),
                                  "--label-column", "class"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
