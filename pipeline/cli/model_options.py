"""The options that describe a model file the user trained, shared by ``label`` and ``classify``."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer


class Head(str, Enum):
    auto = "auto"
    softmax = "softmax"
    sigmoid = "sigmoid"
    logits = "logits"


ClassesOption = Annotated[Optional[str], typer.Option(
    help="Class names of your model file: a text file with one name per line, or a comma-separated list "
         "(cats,dogs). Default: class_0..class_{n-1}.")]
PreprocessOption = Annotated[Optional[str], typer.Option(
    help="How your model file expects pixels scaled: rescale (1/255, the tutorials' ImageDataGenerator), "
         "tf, caffe, torch, none (scaling inside the model) or the registry name of its base.")]
InputSizeOption = Annotated[Optional[int], typer.Option(
    min=1, help="Square input side, only for a model file whose input shape leaves it open.")]
HeadOption = Annotated[Head, typer.Option(
    help="What your model file outputs: detected by default; declare logits for a model without a final activation.")]
MultiLabelOption = Annotated[bool, typer.Option(
    "--multi-label", help="Independent sigmoid outputs: keep every class at or above --threshold.")]
ThresholdOption = Annotated[float, typer.Option(
    min=0.0, max=1.0, help="Probability a class needs to be kept with --multi-label.")]


def model_settings(classes: str | None, preprocess: str | None, input_size: int | None, head: Head,
                   multi_label: bool, threshold: float):
    """The library's ModelSettings from the parsed options (reads a --classes file)."""
    from pipeline.models.user_model import ModelSettings, parse_classes

    return ModelSettings(parse_classes(classes), preprocess, input_size, Head(head).value, multi_label, threshold)
