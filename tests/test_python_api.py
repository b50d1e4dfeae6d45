"""The Python API as a notebook user calls it: pipeline.label, pipeline.predict on their own Ray Dataset,
pipeline.Classifier loaded once, the CLI's keywords and their mistakes."""

from __future__ import annotations

import pandas as pd
import pytest

import pipeline
from pipeline.errors import UserError

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}


pytestmark = pytest.mark.usefixtures("local_ray")  # one local Ray for the module (conftest)


@pytest.fixture(scope="module")
def by_classify(photos) -> dict[str, list[str]]:
    """What the single-process Classifier says of each sample photo: the reference for the Ray paths."""
    classifier = pipeline.Classifier(top_k=3)
    return {name: p.labels for name, p in zip(photos, classifier.classify([str(p) for p in photos.values()]))}


@pytest.mark.slow
def test_label_takes_the_commands_keywords_and_returns_its_summary(photo_dir, tmp_path, by_classify):
    from ray.data import DataContext

    output = tmp_path / "out"
    lines: list[str] = []
    context = DataContext.get_current()
    before = (context.execution_options.resource_limits, context.enable_progress_bars)
    summary = pipeline.label(str(photo_dir), str(output), top_k=3, concurrency=1, batch_size=4,
                             progress=lines.append)
    assert (summary.labeled, summary.errors) == (4, 0)
    assert any("4 images listed" in line for line in lines), lines
    # The job capped the object store for its own decoded images and hid Ray Data's progress bars, for its
    # own length: the notebook's next Dataset runs with its settings as they were.
    context = DataContext.get_current()
    assert (context.execution_options.resource_limits, context.enable_progress_bars) == before
    frame = pd.read_parquet(output)
    assert {name: list(frame.loc[frame["path"].str.contains(name), "top_labels"].iloc[0])
            for name in by_classify} == by_classify
    again = pipeline.label(str(photo_dir), str(output), top_k=3, resume=True, progress=None)
    assert (again.labeled, again.skipped) == (0, 4)
    with pytest.raises(UserError, match="--resume"):  # a second run without --resume, as the command says
        pipeline.label(str(photo_dir), str(output), top_k=3, progress=None)


def test_unknown_keywords_name_the_option_meant_and_bad_values_are_the_commands_errors(photo_dir, tmp_path):
    with pytest.raises(TypeError, match=r"'topk' \(did you mean top_k\?\)"):
        pipeline.label(str(photo_dir), str(tmp_path / "out"), topk=3)
    with pytest.raises(TypeError, match=r"'epoch' \(did you mean epochs\?\)"):
        pipeline.finetune(str(photo_dir), str(tmp_path / "model"), epoch=3)
    with pytest.raises(TypeError, match="'resume'.*it takes model, weights, top_k"):
        pipeline.predict(None, resume=True)
    with pytest.raises(UserError, match="--top-k 0 should be at least 1"):
        pipeline.label(str(photo_dir), str(tmp_path / "out"), top_k=0, progress=None)
    with pytest.raises(UserError, match="does not exist"):
        pipeline.finetune(str(tmp_path / "nowhere"), str(tmp_path / "model"), progress=None)


@pytest.mark.slow
def test_predict_adds_the_prediction_columns_to_a_dataset_of_paths_and_keeps_its_own(photos, tmp_path, by_classify):
    import ray

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    rows = [{"path": str(path), "name": name, "taken": i} for i, (name, path) in enumerate(photos.items())]
    rows.append({"path": str(broken), "name": "broken", "taken": 99})
    dataset = pipeline.predict(ray.data.from_items(rows), top_k=3, concurrency=1, batch_size=2)
    frame = dataset.to_pandas().set_index("name")
    assert set(frame.columns) == {"path", "taken", "label", "score", "top_labels", "top_scores", "top_ids", "model",
                                  "weights_digest", "error"}
    assert {name: list(frame.loc[name, "top_labels"]) for name in by_classify} == by_classify
    assert frame.loc["chelsea", "label"] in CAT_CLASSES and frame.loc["coffee", "taken"] == 1
    assert pd.isna(frame.loc["broken", "label"])
    assert frame.loc["broken", "error"] and list(frame.loc["broken", "top_labels"]) == []
    assert frame["error"].isna().sum() == 4


@pytest.mark.slow
def test_predict_reads_the_pixels_of_read_images_and_the_bytes_of_read_binary_files(photo_dir, by_classify):
    import ray

    pixels = pipeline.predict(ray.data.read_images(str(photo_dir), include_paths=True, mode="RGB"), top_k=3,
                              concurrency=1).to_pandas()
    assert "image" in pixels.columns and pixels["error"].isna().all()
    top1 = {path.rsplit("/", 1)[-1].split(".")[0]: label for path, label in zip(pixels["path"], pixels["label"])}
    # Ray decodes these (Pillow, full size), we resize: the same top-1 as our own decode.
    assert top1 == {name: labels[0] for name, labels in by_classify.items()}

    encoded = pipeline.predict(ray.data.read_binary_files(str(photo_dir), include_paths=True), top_k=3,
                               concurrency=1).to_pandas()
    assert {path.rsplit("/", 1)[-1].split(".")[0]: list(labels)
            for path, labels in zip(encoded["path"], encoded["top_labels"])} == by_classify


def test_predict_refuses_rows_it_cannot_read_before_anything_runs():
    import ray

    with pytest.raises(ValueError, match="needs an 'image', 'bytes' or 'path' column; the rows have file"):
        pipeline.predict(ray.data.from_items([{"file": "a.jpg"}]))
    with pytest.raises(ValueError, match="already have 'label'.*rename_columns"):
        pipeline.predict(ray.data.from_items([{"path": "a.jpg", "label": "cat"}]))


def test_a_classifier_loads_its_model_once_for_many_calls(photos, monkeypatch):
    from pipeline import classification

    loads = []
    original = classification.load_model
    monkeypatch.setattr(classification, "load_model", lambda *a, **k: loads.append(a) or original(*a, **k))
    classifier = pipeline.Classifier(top_k=2)
    first = classifier([str(photos["coffee"])])
    second = classifier.classify([photos["coffee"].read_bytes(), str(photos["chelsea"])])
    assert len(loads) == 1
    assert first[0].labels == second[0].labels and first[0].label == "espresso"
    assert second[1].label in CAT_CLASSES and len(classifier.class_names) == 1000
