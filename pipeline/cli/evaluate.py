"""``pipeline evaluate``: labeling OUTPUTs scored against the truth, one beside the other."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pipeline.cli.app import app, user_errors
from pipeline.cli.help_format import PlainHelpCommand
from pipeline.plural import plural

CLASSES_SHOWN = 10  # per-class lines printed (lowest F1 first); --out has them all


@app.command("evaluate", cls=PlainHelpCommand)
def evaluate_command(
    predictions: Annotated[list[str], typer.Argument(metavar="PREDICTIONS", help="OUTPUTs of 'pipeline label' runs (folders or URLs); several give a side-by-side table.")],
    truth: Annotated[str, typer.Option(help="The right answers: a labels table (CSV or Parquet with path and label columns; a folder or glob of them) or a folder with one subfolder per class.")],
    out: Annotated[Optional[str], typer.Option(help="Write metrics.json, per_class.csv and the confusion matrix (CSV and PNG) here; one subfolder per PREDICTIONS when there are several.")] = None,
    path_column: Annotated[str, typer.Option(help="Labels tables: the column of image paths.")] = "path",
    label_column: Annotated[str, typer.Option(help="Labels tables: the column of true class names.")] = "label",
    storage_options: Annotated[Optional[str], typer.Option(help="fsspec options as JSON.")] = None,
) -> None:
    """Score labeling OUTPUTs against the truth: accuracy, top-k, per-class precision/recall/F1, confusions."""
    from pipeline import storage
    from pipeline.cli.options import apply_storage_options
    from pipeline.evaluation import evaluate, read_truth, write_evaluation
    from pipeline.finetune.data import LabelsSource

    with user_errors():
        apply_storage_options(storage_options)
        answers, notes = read_truth(truth, LabelsSource(path_column, label_column))
        for note in notes:
            typer.echo(note, err=True)
        results = [evaluate(output, answers) for output in predictions]
        for i, result in enumerate(results):
            if out is not None:
                write_evaluation(result, out if len(results) == 1 else storage.join(out, f"{i + 1:02d}"))
    for result in results:
        typer.echo(f"{result.predictions} ({result.model or 'model unknown'}): accuracy {result.accuracy:.4f}, "
                   f"top-{result.k} {result.top_k_accuracy:.4f} on {plural(result.scored, 'image')}; "
                   f"{result.no_prediction:,} of the truth's images not labeled, "
                   f"{plural(result.failed, 'row')} failed in labeling, {plural(result.no_truth, 'row')} without a truth")
        worst = sorted(result.per_class(), key=lambda row: (row["f1"], row["class"]))[:CLASSES_SHOWN]
        typer.echo(f"  {'class':<24} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
        for row in worst:
            typer.echo(f"  {row['class']:<24} {row['precision']:9.3f} {row['recall']:7.3f} {row['f1']:7.3f} "
                       f"{row['support']:8,}")
        if result.truth_classes > CLASSES_SHOWN:
            typer.echo(f"  ... {plural(result.truth_classes - CLASSES_SHOWN, 'more class', 'more classes')} "
                       "(lowest F1 shown first; --out writes every class)")
        confused = ", ".join(f"{t}->{p} ({n:,})" for t, p, n in result.most_confused()) or "none"
        typer.echo(f"  most confused (true->predicted): {confused}")
    if len(results) > 1:
        typer.echo(f"\n{'PREDICTIONS':<40} {'model':<28} {'accuracy':>8} {'top-k':>7} {'images':>8}")
        for result in sorted(results, key=lambda r: -r.accuracy):
            typer.echo(f"{result.predictions:<40} {str(result.model):<28} {result.accuracy:8.4f} "
                       f"{result.top_k_accuracy:7.4f} {result.scored:8,}")
    if out is not None:
        typer.echo(f"-> {out}", err=True)
