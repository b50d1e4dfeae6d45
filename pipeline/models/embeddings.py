"""Where a classifier's pooled penultimate features are, and a two-output model that returns them.

``--embeddings`` stores, per image, the vector the classification head reads: the
global-pooled features. The same forward pass yields it beside the class outputs
(one model call), so labeling with embeddings costs no second pass over the network.
"""

from __future__ import annotations

from typing import Any

from pipeline.models.errors import ModelLoadError


def feature_tensor(model: Any) -> tuple[Any, str] | None:
    """The symbolic tensor holding the features the head reads, and a description of where; None if not found.

    Rules, in order: the input of the last Dense layer when it is one vector per image (the classification
    head of every registry model and fine-tuned artifact: the global-pooled features, after any
    dropout or normalization between pooling and head; VGG's fc2); else the output of the last global
    pooling layer (MobileNet V1/V3, whose heads are 1x1 convolutions). A model that is not a Keras
    graph (a SavedModel's serving signature) has neither.
    """
    import keras

    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        return None
    pooling = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
    try:
        dense = next((layer for layer in reversed(model.layers) if isinstance(layer, keras.layers.Dense)), None)
        if dense is not None and len(dense.input.shape) == 2:
            return dense.input, f"input of the Dense layer '{dense.name}'"
        for layer in reversed(model.layers):
            if isinstance(layer, pooling):
                return layer.output, f"output of the {type(layer).__name__} layer '{layer.name}'"
    except (AttributeError, ValueError):  # a layer called more than once has no single input/output
        return None
    return None


def embedding_model(model: Any, name: str) -> Any:
    """A functional model with the same inputs and two outputs: the class outputs, then the pooled features.

    Built once when the model loads; it shares the model's layers and weights (no copy).
    """
    import keras

    found = feature_tensor(model)
    if found is None:
        raise ModelLoadError(no_features_message(name))
    features, _where = found
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # the structure the model was built with
    return keras.Model(inputs, [model.outputs[0], features], name=f"{model.name}_with_embeddings")


def no_features_message(name: str) -> str:
    return (f"--embeddings: cannot find the pooled features in model '{name}': it has no global pooling "
            "layer and no Dense head layer in a Keras graph (a SavedModel serves only its outputs). Save "
            "it as a Keras model (model.save('name.keras')) whose head is GlobalAveragePooling2D -> Dense, "
            "or leave --embeddings out")
