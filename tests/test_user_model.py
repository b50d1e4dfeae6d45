"""A user's own Keras model: trained here on real photos, saved as .keras, .h5 and SavedModel, then labeled.

The story of someone coming from the Keras tutorials: a frozen base with a sigmoid head trained on
``x / 255`` pixels, saved with ``model.save(...)``, labeled with ``--classes ... --preprocess rescale``.
Every model here is made in the test; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.images import decode_or_error

runner = CliRunner()
TUTORIAL_SIZE = 96  # small input keeps the Lite0 base fast; the weights do not depend on it
TINY_SIZE = 32
CREATURES = ("chelsea", "astronaut")  # class 0 of the binary model ("creatures" sorts first)
OBJECTS = ("coffee", "rocket")  # class 1: the sigmoid unit's p


def _pixels(photos, names, size: int) -> np.ndarray:
    """Photos decoded exactly as the labeling job decodes them, so training and labeling see the same pixels."""
    return np.stack([decode_or_error(photos[n].read_bytes(), (size, size)).image for n in names]).astype("float32")


@pytest.fixture(scope="module")
def tutorial_models(tmp_path_factory, photos):
    """The tutorials' transfer-learning model: frozen base, Dropout, Dense(1, sigmoid), in three formats."""
    import keras

    from pipeline.models.efficientnet_lite import EfficientNetLite

    keras.utils.set_random_seed(0)
    base = EfficientNetLite("lite0", include_top=False, weights="imagenet",
                            input_shape=(TUTORIAL_SIZE, TUTORIAL_SIZE, 3), pooling="avg")
    base.trainable = False
    inputs = keras.Input((TUTORIAL_SIZE, TUTORIAL_SIZE, 3))
    x = keras.layers.Dropout(0.2)(base(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    images = _pixels(photos, CREATURES + OBJECTS, TUTORIAL_SIZE)
    targets = np.array([0, 0, 1, 1], "float32")
    images, targets = np.concatenate([images, images[:, :, ::-1]]), np.concatenate([targets, targets])
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    model.fit(images / 255.0, targets, epochs=20, batch_size=8, verbose=0)  # ImageDataGenerator(rescale=1/255)
    folder = tmp_path_factory.mktemp("tutorial")
    model.save(folder / "cats_dogs.keras")
    model.save(folder / "cats_dogs.h5")
    model.export(str(folder / "cats_dogs_savedmodel"), verbose=False)
    return folder


def _tiny_model(photos, names, targets, activation: str | None, rescaling_inside: bool = True,
                input_size: int | None = TINY_SIZE):
    """A small conv net memorizing ``names`` -> ``targets``; pixels scaled inside it (--preprocess none)."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((input_size, input_size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs) if rescaling_inside else inputs
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x) if input_size is None else keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(targets.shape[1], activation=activation)(x)
    model = keras.Model(inputs, outputs)
    loss = {"softmax": "categorical_crossentropy", "sigmoid": "binary_crossentropy"}.get(
        activation, keras.losses.CategoricalCrossentropy(from_logits=True) if targets.shape[1] > 1
        else keras.losses.BinaryCrossentropy(from_logits=True))
    model.compile(keras.optimizers.Adam(1e-2), loss)
    repeats = 25  # many steps in few epochs: an epoch's fixed cost dominates such a small model
    images = np.tile(_pixels(photos, names, TINY_SIZE), (repeats, 1, 1, 1))
    model.fit(images, np.tile(targets, (repeats, 1)), epochs=6, batch_size=len(names), shuffle=False, verbose=0)
    return model


def _label(*args: str):
    return runner.invoke(app, ["label", *args, "--batch-size", "4"])


@pytest.mark.slow
def test_tutorial_model_labels_the_same_through_keras_h5_and_savedmodel(tutorial_models, photo_dir, tmp_path,
                                                                       local_ray):
    frames = {}
    for name in ("cats_dogs.keras", "cats_dogs.h5", "cats_dogs_savedmodel"):
        out = tmp_path / name
        # Names given out of order: a single sigmoid unit follows flow_from_directory's sorted order.
        result = _label(str(photo_dir), str(out), "--model", str(tutorial_models / name),
                        "--classes", "objects,creatures", "--preprocess", "rescale")
        assert result.exit_code == 0, result.output
        assert f"{TUTORIAL_SIZE}x{TUTORIAL_SIZE} input, --preprocess rescale, sigmoid head (detected" in result.output
        assert "'objects' scores p and 'creatures' 1-p" in result.output
        frame = pd.read_parquet(out)
        frame["name"] = frame["path"].str.rsplit("/", n=1).str[-1].str.split(".").str[0]
        frames[name] = frame.set_index("name").sort_index()
    keras_frame = frames["cats_dogs.keras"]
    assert keras_frame["error"].isna().all()
    assert keras_frame["label"].to_dict() == {"astronaut": "creatures", "chelsea": "creatures",
                                              "coffee": "objects", "rocket": "objects"}
    assert all(sorted(labels) == ["creatures", "objects"] for labels in keras_frame["top_labels"])
    for row in keras_frame.itertuples():  # two classes, [1 - p, p]: their probabilities sum to one
        assert sum(row.top_scores) == pytest.approx(1.0, abs=1e-5)
        assert list(row.top_ids) == ([0, 1] if row.label == "creatures" else [1, 0])
    assert keras_frame["model"].iloc[0] == str(tutorial_models / "cats_dogs.keras")
    for other in ("cats_dogs.h5", "cats_dogs_savedmodel"):
        assert frames[other]["label"].to_dict() == keras_frame["label"].to_dict()
        np.testing.assert_allclose(frames[other]["score"], keras_frame["score"], atol=1e-4)


def test_softmax_model_with_classes_from_a_file_and_from_a_url(photos, tmp_path):
    import fsspec

    names = ("chelsea", "coffee", "rocket")
    model = _tiny_model(photos, names, np.eye(3, dtype="float32"), "softmax")
    model.save(tmp_path / "three.keras")
    (tmp_path / "classes.txt").write_text("kitten\n\nmug\nrocket\n")
    result = runner.invoke(app, ["classify", *(str(photos[n]) for n in names), "--model", str(tmp_path / "three.keras"),
                                 "--classes", str(tmp_path / "classes.txt"), "--preprocess", "none", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    assert "softmax head (detected" in result.output
    tops = [line.split()[1] for line in result.output.splitlines() if line.strip().startswith("1. ")]
    assert tops == ["kitten", "mug", "rocket"]
    assert result.output.count("(class ") == 6

    fsspec.filesystem("memory").pipe("/models/three.keras", (tmp_path / "three.keras").read_bytes())
    from_url = runner.invoke(app, ["classify", str(photos["coffee"]), "--model", "memory://models/three.keras",
                                   "--classes", "kitten,mug,rocket", "--preprocess", "none"])
    assert from_url.exit_code == 0, from_url.output
    assert "1. mug" in from_url.output


def test_multi_label_and_logits_rows_fit_the_same_schema(photos, tmp_path):
    import fsspec
    import pyarrow as pa

    from pipeline.label.predictor import Predictor
    from pipeline.models.user_model import ModelSettings
    from pipeline.results import SCHEMA

    names = ("chelsea", "astronaut", "rocket", "coffee")
    tags = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1], [0, 0, 0]], "float32")  # animal, person, space
    _tiny_model(photos, names, tags, "sigmoid").save(tmp_path / "tags.h5")
    batch = {"path": np.array(names, dtype=object), "image": _pixels(photos, names, TINY_SIZE).astype(np.uint8),
             "error": np.array(["", "", "", ""], dtype=object), "transient": np.zeros(4, bool)}
    settings = ModelSettings(("animal", "person", "space"), "none", multi_label=True, threshold=0.5)
    table = Predictor(str(tmp_path / "tags.h5"), "imagenet", 5, 4, {}, settings=settings)(batch)
    assert table.drop_columns(["transient"]).schema == SCHEMA
    rows = {r["path"]: r for r in table.to_pylist()}
    assert rows["chelsea"]["top_labels"] == ["animal"]
    assert sorted(rows["astronaut"]["top_labels"]) == ["person", "space"]
    assert rows["rocket"]["top_labels"] == ["space"]
    assert rows["coffee"]["top_labels"] == [] and rows["coffee"]["label"] is not None  # nothing above 0.5
    assert all(s >= 0.5 for r in rows.values() for s in r["top_scores"])

    # Logits (no final activation), exported as a SavedModel in memory://: softmax is applied.
    logits = _tiny_model(photos, names[:3], np.eye(3, dtype="float32"), None)
    logits.export(str(tmp_path / "logits_savedmodel"), verbose=False)
    memory = fsspec.filesystem("memory")
    for file in (tmp_path / "logits_savedmodel").rglob("*"):
        if file.is_file():
            memory.pipe(f"/logits/{file.relative_to(tmp_path / 'logits_savedmodel')}", file.read_bytes())
    predictor = Predictor("memory://logits", "imagenet", 3, 4, {}, settings=ModelSettings(None, "none"))
    assert predictor.classifier.loaded.head == "logits"
    rows = pa.Table.to_pylist(predictor(batch))
    assert [r["label"] for r in rows[:3]] == ["class_0", "class_1", "class_2"]
    for row in rows:
        assert sum(row["top_scores"]) == pytest.approx(1.0, abs=1e-5)
    from pipeline.models.resolved import resolve_model

    remote, local = (resolve_model(where, settings=ModelSettings(None, "none")).identity
                     for where in ("memory://logits", str(tmp_path / "logits_savedmodel")))
    assert remote["kind"] == "saved_model" and remote["head"] == "logits" and len(remote["sha256"]) == 64
    assert remote["sha256"] == local["sha256"]  # the same bytes, wherever they are

    # The TensorFlow tutorial's binary head: Dense(1) with no activation, trained from_logits.
    binary = _tiny_model(photos, names, np.array([[0], [0], [1], [1]], "float32"), None)
    binary.save(tmp_path / "binary_logit.keras")
    predictor = Predictor(str(tmp_path / "binary_logit.keras"), "imagenet", 5, 4, {},
                          settings=ModelSettings(("creatures", "objects"), "none"))
    assert predictor.classifier.loaded.head == "logits"
    rows = pa.Table.to_pylist(predictor(batch))
    assert [r["label"] for r in rows] == ["creatures", "creatures", "objects", "objects"]
    assert all(sum(r["top_scores"]) == pytest.approx(1.0, abs=1e-5) for r in rows)


@pytest.mark.parametrize("name, head, classes", [("tf_keras2_sequential.h5", "sigmoid", ("cats", "dogs")),
                                                 ("tf_keras2_functional.h5", "softmax", ("a", "b", "c"))])
def test_h5_saved_by_tf_keras_2_loads_and_predicts_as_it_did(name, head, classes):
    # Made with the real tf.keras 2.21 by tests/data/make_tf_keras2_models.py (see there why not here).
    import json
    from pathlib import Path

    from pipeline.models.loading import load_model
    from pipeline.models.user_model import ModelSettings

    data = Path(__file__).parent / "data"
    expected = np.array(json.loads((data / "tf_keras2_expected.json").read_text())[name])
    size = 16
    pixels = (np.arange(2 * size * size * 3).reshape(2, size, size, 3) * 37 % 251).astype("float32")
    loaded = load_model(str(data / name), settings=ModelSettings(classes, "rescale"))
    assert loaded.head == head and loaded.input_size == size
    np.testing.assert_allclose(np.asarray(loaded.keras_model(loaded.preprocess_input(pixels))), expected, atol=1e-5)


def test_open_input_size_needs_input_size(photos, tmp_path):
    model = _tiny_model(photos, ("chelsea", "coffee"), np.eye(2, dtype="float32"), "softmax", input_size=None)
    model.save(tmp_path / "any_size.keras")
    args = ["classify", str(photos["coffee"]), "--model", str(tmp_path / "any_size.keras"), "--preprocess", "none"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--input-size" in refused.output
    result = runner.invoke(app, [*args, "--input-size", str(TINY_SIZE), "--classes", "cat,cup"])
    assert result.exit_code == 0, result.output
    assert "1. cup" in result.output


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory):
    """Model files a user gets wrong, each made for real."""
    import keras

    folder = tmp_path_factory.mktemp("mistakes")

    def small(first_layer, shape=(TINY_SIZE, TINY_SIZE, 3), units=1):
        inputs = keras.Input(shape)
        x = keras.layers.Flatten()(first_layer(inputs) if first_layer else inputs)
        return keras.Model(inputs, keras.layers.Dense(units, activation="sigmoid")(x))

    class Doubler(keras.layers.Layer):  # a custom class: its code is not in the file
        def call(self, x):
            return x * 2.0

    custom = small(Doubler())
    custom.save(folder / "custom.keras")
    custom.save(folder / "custom.h5")
    lambda_model = small(keras.layers.Lambda(lambda t: t / 255.0))
    lambda_model.save(folder / "lambda.keras")
    lambda_model.save(folder / "lambda.h5")
    binary = small(None)
    binary.save(folder / "binary.keras")
    binary.save_weights(folder / "binary.weights.h5")
    shutil.copy(folder / "binary.weights.h5", folder / "renamed_weights.h5")
    small(None, shape=(10,)).save(folder / "tabular.keras")
    (folder / "notes.keras").write_text("not a model")
    (folder / "model.txt").write_text("not a model either")
    return folder


@pytest.mark.parametrize(
    "model, extra, message",
    [
        ("lambda.keras", [], "contains a Lambda layer"),
        ("lambda.h5", [], "contains a Lambda layer"),
        ("custom.keras", [], "uses custom classes (test_user_model.Doubler)"),
        ("custom.h5", [], "uses custom classes"),
        ("binary.keras", ["--classes", "a,b,c"], "one sigmoid unit, which is two classes, but --classes names 3"),
        ("binary.weights.h5", [], "holds weights only"),
        ("renamed_weights.h5", [], "holds weights only"),
        ("tabular.keras", [], "not images"),
        ("notes.keras", [], "is not a Keras model"),
        ("model.txt", [], "is not a model we can load"),
        ("binary.keras", ["--preprocess", "resnet5"], "did you mean resnet50"),
        ("efficientnet_lite0", ["--classes", "a,b"], "Leave --classes out"),
    ],
)
def test_model_mistakes_exit_2_before_cluster_work(mistakes, photo_dir, tmp_path, model, extra, message):
    location = model if "." not in model else str(mistakes / model)
    preprocess = [] if "--preprocess" in extra or "." not in model else ["--preprocess", "rescale"]
    out = tmp_path / "out"
    result = _label(str(photo_dir), str(out), "--model", location, *preprocess, *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()  # refused before OUTPUT was touched or Ray started


def test_lambda_refusal_says_what_to_do(mistakes, photo_dir, tmp_path):
    result = _label(str(photo_dir), str(tmp_path / "out"), "--model", str(mistakes / "lambda.keras"),
                    "--preprocess", "none")
    assert "safe mode" in result.output and "model.export" in result.output


def test_missing_preprocess_is_asked_for(mistakes, photo_dir, tmp_path):
    result = _label(str(photo_dir), str(tmp_path / "out"), "--model", str(mistakes / "binary.keras"))
    assert result.exit_code == 2
    assert "--preprocess" in result.output and "rescale" in result.output


def test_model_identity_names_the_bytes_and_the_settings(mistakes):
    from pipeline.models.resolved import resolve_model
    from pipeline.models.user_model import ModelSettings

    path = str(mistakes / "binary.keras")
    settings = ModelSettings(("cats", "dogs"), "rescale")
    identity = resolve_model(path, settings=settings).identity
    assert identity == {
        "kind": "keras", "model": path, "sha256": hashlib.sha256((mistakes / "binary.keras").read_bytes()).hexdigest(),
        "preprocess": "rescale", "classes": ["cats", "dogs"], "head": "sigmoid", "input_size": TINY_SIZE,
        "multi_label": False, "threshold": None,
    }
    assert resolve_model(path, settings=ModelSettings(("cats", "dogs"), "tf")).identity != identity
    assert resolve_model("efficientnet_lite0").identity == {"kind": "registry", "model": "efficientnet_lite0",
                                                    "weights": "imagenet", "input_size": 224}
