"""Every registry entry builds, its size and preprocessing are the ones Keras defines, and it has pooled features."""

from __future__ import annotations

import gc
import importlib
import inspect

import keras
import numpy as np
import pytest

from pipeline.models.embeddings import embedding_model
from pipeline.models.registry import REGISTRY, UnknownModelError, get_spec, list_models


def _smallest_of_each_family() -> set[str]:
    """One entry per family module (the fewest parameters): the family's forward pass is run on it."""
    smallest: dict[str, str] = {}
    for name, spec in REGISTRY.items():
        if spec.module not in smallest or spec.parameters < REGISTRY[smallest[spec.module]].parameters:
            smallest[spec.module] = name
    return set(smallest.values())


FORWARD_CHECKED = _smallest_of_each_family()
QUICK_LANE_PARAMETERS = 30_000_000  # larger entries take seconds each to build: the full suite builds them


def _entries() -> list:
    return [name if name in FORWARD_CHECKED or REGISTRY[name].parameters <= QUICK_LANE_PARAMETERS
            else pytest.param(name, marks=pytest.mark.slow) for name in REGISTRY]


@pytest.mark.parametrize("name", _entries())
def test_entry_builds_with_random_weights_and_matches_keras(name):
    """Every entry's own facts (input size, parameters, preprocessing, where its pooled features are) against
    the model Keras builds; the forward pass through the two-output view runs on one entry per family (the
    family's layers and head are the same at every size: the larger ones took minutes for nothing more)."""
    spec = REGISTRY[name]
    model = spec.builder_fn(weights=None)
    try:
        declared = model.input_shape[1:3]
        if declared != (None, None):  # MobileNetV3 takes any size; its native size is checked below
            assert declared == (spec.input_size, spec.input_size)
        assert model.count_params() == spec.parameters
        assert model.output_shape[-1] == 1000
        # The preprocessing must be the builder's own module's, not a lookalike.
        builder = getattr(importlib.import_module(spec.builder_module or spec.module), spec.builder)
        home = importlib.import_module(builder.__module__)
        assert spec.preprocess_input is home.preprocess_input
        # --embeddings: one call gives the classes and the pooled features the head reads.
        view = embedding_model(model, name)
        assert view.outputs[0].shape[-1] == 1000 and int(np.prod(view.outputs[1].shape[1:])) >= 256
        if name in FORWARD_CHECKED:
            out, features = view(np.zeros((1, *spec.input_shape), np.float32), training=False)
            np.testing.assert_allclose(np.asarray(out).sum(), 1.0, rtol=1e-3)
            assert np.asarray(features).size >= 256 and np.isfinite(np.asarray(features)).all()
    finally:
        del model
        keras.backend.clear_session()
        gc.collect()


def test_mobilenet_v3_native_size_is_keras_default():
    spec = get_spec("mobilenet_v3_small")
    builder = getattr(importlib.import_module(spec.builder_module), spec.builder)
    # Keras documents and defaults MobileNetV3 to 224 when input_shape is None.
    assert "224" in inspect.getdoc(builder)
    assert spec.input_size == 224


def test_every_entry_names_what_its_preprocessing_does():
    """The registry states each family's preprocessing in words (so listing it needs no Keras): every word
    must match what the family's own ``preprocess_input`` does to a probe."""
    from pipeline.models.registry import REGISTRY, describe_preprocessing

    for spec in REGISTRY.values():
        assert spec.preprocessing == describe_preprocessing(spec.preprocess_input), spec.name


def test_preprocessing_is_named_from_behaviour():
    assert get_spec("resnet50").preprocessing.startswith("caffe")
    assert get_spec("inception_v3").preprocessing.startswith("tf")
    assert get_spec("densenet121").preprocessing.startswith("torch")
    assert get_spec("efficientnet_b3").preprocessing.startswith("none")
    assert get_spec("efficientnet_lite0").preprocessing == "(x - 127) / 128"


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownModelError) as err:
        get_spec("resnet5")
    assert "did you mean resnet50" in str(err.value)
    assert "pipeline models" in str(err.value)


def test_names_are_forgiving_and_wildcards_work():
    assert get_spec("ResNet-50".replace("-", "")).name == "resnet50"
    assert get_spec("Inception-V3").name == "inception_v3"
    assert set(list_models("efficientnet_b*")) == {f"efficientnet_b{i}" for i in range(8)}
    assert "efficientnet_lite0" in list_models("*lite*")


def test_offline_default_has_weights_installed():
    assert get_spec("efficientnet_lite0").weights_offline
    assert not get_spec("resnet50").weights_offline
