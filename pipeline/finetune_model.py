"""The fine-tuned classifier: a registry base with a new head, and what each training stage may change.

The model takes the base family's preprocessed pixels (``spec.preprocess_input``),
exactly like the base, so the exported artifact is labeled through the same path
as any registry model. Augmentation is kept outside it: the export is plain layers.
"""

from __future__ import annotations

from pipeline.models.registry import get_spec

DEFAULT_DROPOUT = 0.2


def build_classifier(base: str, image_size: int, num_classes: int, weights: str | None = "imagenet",
                     dropout: float = DEFAULT_DROPOUT):
    """Base (frozen, BatchNorm in inference mode) -> global average pooling -> dropout -> dense softmax."""
    import keras
    from keras import layers

    spec = get_spec(base)
    backbone = spec.builder_fn(weights=weights, include_top=False, input_shape=(image_size, image_size, 3))
    backbone.trainable = False
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = backbone(inputs, training=False)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="head_classes")(x)
    return keras.Model(inputs, outputs, name=f"{spec.name}_finetuned")


def backbone_of(model):
    return model.layers[1]


def unfreeze_top(model, unfreeze: int | None) -> int:
    """Make the top ``unfreeze`` layers of the base trainable (all when None); BatchNorm stays frozen.

    A frozen Keras 3 BatchNormalization runs in inference mode, so its moving statistics
    (learned on ImageNet) are neither used from the batch nor updated. Returns how many
    layers hold trainable weights now.
    """
    from keras import layers

    backbone = backbone_of(model)
    backbone.trainable = True
    candidates = backbone.layers if unfreeze is None else backbone.layers[-unfreeze:] if unfreeze > 0 else []
    chosen = {id(layer) for layer in candidates}
    trainable = 0
    for layer in backbone.layers:
        layer.trainable = id(layer) in chosen and not isinstance(layer, layers.BatchNormalization)
        trainable += bool(layer.trainable and layer.weights)
    return trainable


def augmentation_layers(seed: int | None = None):
    """Random flip, rotation and zoom: applied to training batches only, never exported."""
    import keras
    from keras import layers

    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomRotation(0.08, fill_mode="nearest", seed=seed),
        layers.RandomZoom(0.1, fill_mode="nearest", seed=seed),
    ], name="augmentation")
