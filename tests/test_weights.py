"""--weights: files and fsspec URLs load with identical outputs; wrong files fail with both names."""

from __future__ import annotations

import subprocess
import sys

import fsspec
import numpy as np

import pytest

from pipeline.images import decode_image
from pipeline.inference import CompiledClassifier
from pipeline.models.loading import ModelLoadError, load_model


@pytest.fixture(scope="module")
def cat_batch(photos):
    return np.stack([decode_image(photos["chelsea"].read_bytes(), (224, 224))])


@pytest.fixture(scope="module")
def saved_weights(lite0, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "lite0.weights.h5"
    lite0.keras_model.save_weights(str(path))
    return path


def _top(loaded, batch):
    top = CompiledClassifier(loaded, top_k=5).predict(batch)
    return top.ids, top.scores


@pytest.mark.slow
def test_weights_file_and_memory_url_give_identical_outputs(lite0, saved_weights, cat_batch):
    ids, scores = _top(lite0, cat_batch)
    from_file = load_model("efficientnet_lite0", weights=str(saved_weights))
    np.testing.assert_array_equal(_top(from_file, cat_batch)[0], ids)
    np.testing.assert_array_equal(_top(from_file, cat_batch)[1], scores)
    with fsspec.open("memory://bucket/lite0.weights.h5", "wb") as f:
        f.write(saved_weights.read_bytes())
    from_url = load_model("efficientnet_lite0", weights="memory://bucket/lite0.weights.h5")
    np.testing.assert_array_equal(_top(from_url, cat_batch)[1], scores)


def test_keras_file_loads_too(lite0, tmp_path, cat_batch):
    path = tmp_path / "lite0.keras"
    lite0.keras_model.save(str(path))
    loaded = load_model("efficientnet_lite0", weights=str(path))
    np.testing.assert_array_equal(_top(loaded, cat_batch)[0], _top(lite0, cat_batch)[0])


def test_mismatched_weights_name_both(saved_weights):
    with pytest.raises(ModelLoadError) as err:
        load_model("mobilenet_v2", weights=str(saved_weights))
    assert str(saved_weights) in str(err.value) and "mobilenet_v2" in str(err.value)


def test_missing_weights_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("mobilenet_v2", weights=str(tmp_path / "nope.weights.h5"))


def test_random_weights_for_tests_and_benchmarks():
    loaded = load_model("mobilenet_v3_small", weights="none")
    assert loaded.input_size == 224 and len(loaded.class_names) == 1000


def test_a_failed_imagenet_download_names_the_alternatives(no_download_env):
    code = ("from pipeline.models.loading import load_model\n"
            "try:\n    load_model('mobilenet_v2', weights='imagenet')\n"
            "except Exception as err:\n    print(type(err).__name__, err)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=no_download_env)
    assert "ModelLoadError could not download the ImageNet weights of mobilenet_v2" in proc.stdout, proc.stdout + proc.stderr
    assert "efficientnet_lite0" in proc.stdout and "--weights none" in proc.stdout
