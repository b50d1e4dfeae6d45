"""The fine-tuned classifier: a registry base with a new head, and what each training stage may change.

The model takes the base family's preprocessed pixels (``spec.preprocess_input``),
exactly like the base, so the exported artifact is labeled through the same path
as any registry model. Augmentation is kept outside it: the export is plain layers.
"""

from __future__ import annotations

from pipeline.errors import UserError
from pipeline.models.registry import get_spec

DEFAULT_DROPOUT = 0.2
AUGMENTATIONS = ("flip", "rotate", "zoom", "contrast")  # what --augment may name
DEFAULT_AUGMENT = ("flip", "rotate", "zoom")  # photos; digits, text and signs want no flip


def parse_augment(text: str) -> tuple[str, ...]:
    """'flip,rotate' -> ('flip', 'rotate'); 'none' -> (); UserError naming an unknown transform."""
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    if names in ((), ("none",)):
        return ()
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise UserError(f"--augment '{text}': unknown transform(s) {', '.join(unknown)}; choose from "
                        f"{','.join(AUGMENTATIONS)} or 'none'")
    return names


def _inference_mode_class():
    import keras

    class InferenceMode(keras.layers.Layer):
        """Runs the wrapped base with ``training=False`` whatever the outer call says.

        Keras 3 passes the outer ``training`` flag into a nested functional model, overriding
        ``base(x, training=False)``: its dropout / stochastic depth would run while the head
        trains. Calling the base from this layer's ``call`` fixes the flag. Gradients still
        flow to the base's trainable layers in stage 2.
        """

        def __init__(self, base, **kwargs):
            super().__init__(**kwargs)
            self.base = base

        def call(self, inputs, training=None):
            return self.base(inputs, training=False)

        def compute_output_shape(self, input_shape):
            return self.base.compute_output_shape(input_shape)

    return InferenceMode


def build_classifier(base: str, image_size: int, num_classes: int, weights: str | None = "imagenet",
                     dropout: float = DEFAULT_DROPOUT, inference_base: bool = True):
    """Base (frozen, in inference mode) -> global average pooling -> dropout -> dense softmax.

    ``inference_base=False`` builds the same model with the base called directly: the plain
    layers that are exported (same weights in the same order; labeling never trains).
    """
    import keras
    from keras import layers

    spec = get_spec(base)
    backbone = spec.builder_fn(weights=weights, include_top=False, input_shape=(image_size, image_size, 3))
    backbone.trainable = False
    inputs = keras.Input((image_size, image_size, 3), name="image")
    if inference_base:
        x = _inference_mode_class()(backbone, name="frozen_base")(inputs)
    else:
        x = backbone(inputs, training=False)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="head_classes")(x)
    return keras.Model(inputs, outputs, name=f"{spec.name}_finetuned")


def backbone_of(model):
    layer = model.layers[1]
    return getattr(layer, "base", layer)


def unfreeze_top(model, unfreeze: int | None) -> int:
    """Make the top ``unfreeze`` layers of the base trainable (all when None); BatchNorm stays frozen.

    A frozen Keras 3 BatchNormalization runs in inference mode, so its moving statistics
    (learned on ImageNet) are neither used from the batch nor updated; the whole base runs
    in inference mode anyway (``InferenceMode``). Returns how many layers hold trainable weights now.
    """
    from keras import layers

    model.layers[1].trainable = True  # the wrapper (or the base itself); sets every sublayer, fixed below
    backbone = backbone_of(model)
    backbone.trainable = True
    candidates = backbone.layers if unfreeze is None else backbone.layers[-unfreeze:] if unfreeze > 0 else []
    chosen = {id(layer) for layer in candidates}
    trainable = 0
    for layer in backbone.layers:
        layer.trainable = id(layer) in chosen and not isinstance(layer, layers.BatchNormalization)
        trainable += bool(layer.trainable and layer.weights)
    return trainable


def augmentation_layers(names: tuple[str, ...] = DEFAULT_AUGMENT, seed: int | None = None):
    """The chosen random transforms (on 0-255 pixels), for training batches only; None when none chosen."""
    import keras
    from keras import layers

    if not names:
        return None
    make = {
        "flip": lambda: layers.RandomFlip("horizontal", seed=seed),
        "rotate": lambda: layers.RandomRotation(0.08, fill_mode="nearest", seed=seed),
        "zoom": lambda: layers.RandomZoom(0.1, fill_mode="nearest", seed=seed),
        "contrast": lambda: layers.RandomContrast(0.2, value_range=(0, 255), seed=seed),
    }
    return keras.Sequential([make[name]() for name in names], name="augmentation")
