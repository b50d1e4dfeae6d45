"""``pipeline report``: a self-contained HTML page to review a labeling job's images."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pipeline.cli.app import app, user_errors
from pipeline.cli.help_format import PlainHelpCommand
from pipeline.plural import plural


@app.command("report", cls=PlainHelpCommand)
def report_command(
    output: Annotated[str, typer.Argument(metavar="OUTPUT", help="OUTPUT of a labeling job (folder or URL).")],
    report: Annotated[str, typer.Argument(metavar="REPORT", help="The HTML file to write (local path or URL).")],
    label: Annotated[Optional[str], typer.Option(help="Only this top-1 label.")] = None,
    max_per_label: Annotated[int, typer.Option(min=1, help="Thumbnails per label, least confident first.")] = 24,
    min_score: Annotated[Optional[float], typer.Option(help="Only rows whose top-1 score is at least this.")] = None,
    truth: Annotated[Optional[str], typer.Option(help="The right answers (a labels table or class folders, as for 'pipeline evaluate'): the page shows the mistakes, grouped by true -> predicted class, most confident first.")] = None,
    path_column: Annotated[str, typer.Option(help="With --truth as a labels table: the column of image paths.")] = "path",
    label_column: Annotated[str, typer.Option(help="With --truth as a labels table: the column of true class names.")] = "label",
    storage_options: Annotated[Optional[str], typer.Option(help="fsspec options as JSON.")] = None,
) -> None:
    """Write one HTML file with thumbnails per label (least confident first), or per mistake with --truth, the
    errors and two charts."""
    from pipeline.cli.options import apply_storage_options
    from pipeline.report import build_report

    with user_errors():
        apply_storage_options(storage_options)
        answers = None
        if truth is not None:
            from pipeline.evaluation import read_truth
            from pipeline.finetune.data import LabelsSource

            answers, notes = read_truth(truth, LabelsSource(path_column, label_column))
            for note in notes:
                typer.echo(note, err=True)
        summary = build_report(output, report, label=label, max_per_label=max_per_label, min_score=min_score,
                               truth=answers)
    wrong = ("" if summary.scored is None
             else f"{summary.wrong:,} wrong of {plural(summary.scored, 'image')} with a truth, ")
    typer.echo(f"{plural(summary.rows, 'row')}, {plural(summary.labels, 'label')}, {plural(summary.errors, 'error')}, "
               f"{wrong}{plural(summary.thumbnails, 'thumbnail')} -> {report} ({summary.bytes / 2**20:.1f} MiB)")
