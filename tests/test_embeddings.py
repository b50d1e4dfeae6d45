"""--embeddings: the pooled features of each image, from the real labeling job, good for near-duplicate search."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.results import SCHEMA, read_results

runner = CliRunner()
LITE0_FEATURES = 1280  # EfficientNet-Lite0's pooled features: the input of its 1000-way Dense head


pytestmark = pytest.mark.usefixtures("local_ray")  # one local Ray for the module (conftest)


def _label(*args: str):
    return runner.invoke(app, ["label", *args, "--batch-size", "4"])


def _cropped_copy(source, target, share: float) -> None:
    """The photo with ``share`` of its width and height cut off each edge: a near-duplicate, as a new file."""
    image = Image.open(source).convert("RGB")
    w, h = image.size
    dx, dy = int(w * share), int(h * share)
    image.crop((dx, dy, w - dx, h - dy)).save(target)


def _unit(vectors) -> np.ndarray:
    matrix = np.stack(vectors).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


@pytest.mark.slow
def test_a_cropped_copy_is_nearer_to_its_photo_than_other_photos_are(photo_dir, photos, tmp_path):
    for i, (name, path) in enumerate(photos.items()):
        _cropped_copy(path, photo_dir / f"{name}_cropped.png", 0.05 + 0.01 * i)  # 5% to 8% off each edge
    (photo_dir / "zero.jpg").write_bytes(b"")  # an error row: its embedding is null
    out = tmp_path / "out"
    result = _label(str(photo_dir), str(out), "--embeddings")
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert len(frame) == 9
    by_name = {p.rsplit("/", 1)[-1].rsplit(".", 1)[0]: row for p, row in zip(frame["path"], frame.itertuples())}
    assert by_name["zero"].error and by_name["zero"].embedding is None
    names = list(photos)
    originals = _unit([by_name[n].embedding for n in names])
    copies = _unit([by_name[f"{n}_cropped"].embedding for n in names])
    assert originals.shape == (4, LITE0_FEATURES) and by_name["chelsea"].embedding.dtype == np.float16
    similarity = copies @ originals.T  # rows: cropped copies; columns: the original photos
    for i, name in enumerate(names):
        others = np.delete(similarity[i], i)
        assert similarity[i, i] > others.max() + 0.1, (name, similarity.round(3))
        assert similarity[i].argmax() == i  # near-duplicate search finds the original first
    # The classification is unchanged by asking for embeddings.
    assert by_name["coffee"].label == "espresso"

    # Everything that reads OUTPUT still works with the extra column.
    assert read_results(str(out))["embedding"].notna().sum() == 8
    shown = runner.invoke(app, ["show", str(out)])
    assert shown.exit_code == 0 and "embeddings: True" in shown.output and "espresso" in shown.output
    manifest = json.loads((out / "_pipeline_manifest.json").read_text())
    assert manifest["embeddings"] is True

    # A resume without --embeddings would write rows of another schema into OUTPUT: refused, naming it.
    refused = _label(str(photo_dir), str(out), "--resume")
    assert refused.exit_code == 2, refused.output
    assert "embeddings: OUTPUT has True, this run has False" in refused.output


@pytest.mark.slow
def test_without_embeddings_the_column_is_absent_and_a_resume_cannot_add_it(photo_dir, tmp_path):
    out = tmp_path / "out"
    assert _label(str(photo_dir), str(out), "--limit", "2").exit_code == 0
    part = next(out.glob("part-*.parquet"))
    assert pq.read_schema(part).remove_metadata() == SCHEMA  # the schema of outputs before --embeddings
    assert "embedding" not in pd.read_parquet(out).columns
    refused = _label(str(photo_dir), str(out), "--resume", "--embeddings")
    assert refused.exit_code == 2 and "embeddings: OUTPUT has False, this run has True" in refused.output


def _model_without_a_head_layer(path) -> None:
    """A valid classifier whose 'head' is a convolution over the whole image: no pooling, no Dense layer."""
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(2, 8, activation="softmax")(inputs)
    keras.Model(inputs, keras.layers.Flatten()(x)).save(path)


def test_a_user_model_with_no_pooled_features_is_refused_with_what_to_do(photo_dir, tmp_path):
    model = tmp_path / "no_head.keras"
    _model_without_a_head_layer(model)
    result = _label(str(photo_dir), str(tmp_path / "out"), "--model", str(model), "--preprocess", "none",
                    "--embeddings")
    assert result.exit_code == 2, result.output
    assert str(model) in result.output and "cannot find the pooled features" in result.output
    assert "leave --embeddings out" in result.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("part-*"))


def test_a_user_model_with_a_dense_head_gets_its_pooled_features(photos, tmp_path):
    import keras

    from pipeline.images import decode_or_error
    from pipeline.label.predictor import Predictor
    from pipeline.models.user_model import ModelSettings

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255.0),
                              keras.layers.Conv2D(6, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    model.save(tmp_path / "small.keras")
    images = np.stack([decode_or_error(photos[n].read_bytes(), (32, 32)).image for n in ("chelsea", "coffee")])
    batch = {"path": np.array(["chelsea", "coffee", "broken"], dtype=object),
             "image": np.concatenate([images, np.zeros((1, 32, 32, 3), np.uint8)]),
             "error": np.array(["", "", "not an image"], dtype=object), "transient": np.zeros(3, bool)}
    predictor = Predictor(str(tmp_path / "small.keras"), "imagenet", 1, 4, {},
                          settings=ModelSettings(("a", "b"), "none"), embeddings=True)
    rows = predictor(batch).to_pylist()
    assert [len(r["embedding"]) if r["embedding"] is not None else None for r in rows] == [6, 6, None]
    # The stored vector is what the GlobalAveragePooling2D layer computes (to float16 precision).
    pooled = keras.Model(model.inputs[0], model.layers[-2].output)(images.astype("float32"))
    np.testing.assert_allclose(np.array(rows[0]["embedding"], np.float32), np.asarray(pooled)[0], rtol=2e-3, atol=1e-4)
