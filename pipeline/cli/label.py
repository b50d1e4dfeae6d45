"""``pipeline label`` (the Ray labeling job) and ``pipeline show`` (its results)."""

from __future__ import annotations

from enum import Enum
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
from pipeline.cli.options import ResizeMode
from pipeline.console_noise import show_everything
from pipeline.errors import UserError
from pipeline.label.config import LabelConfig
from pipeline.plural import plural

# Every default below is LabelConfig's (one place): the CLI, jobs/ and 'pipeline submit' cannot drift from
# what the library does when called directly.


class Precision(str, Enum):
    float32 = "float32"
    mixed = "mixed"


def parse_concurrency(text: str) -> tuple[int, int] | None:
    """'auto' -> None (as many as fit); '4' -> (4, 4) fixed pool; '1,8' -> autoscale between 1 and 8 actors."""
    if text.strip().lower() == "auto":
        return None
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not 1 <= parts[0] <= parts[1]:
        raise UserError(f"--concurrency '{text}' should be auto, N or MIN,MAX with 1 <= MIN <= MAX")
    return parts[0], parts[1]


def label_config(source: str, output: str, model: str, weights: str, top_k: int, batch_size: int,
                 batches_per_task: int, concurrency: str, num_gpus: float, cpus_per_decode: float,
                 cpus_per_actor: float, resume: bool, overwrite: bool, address: Optional[str],
                 limit: Optional[int], rows_per_file: int, storage_options: Optional[str],
                 resize, precision, xla: bool, embeddings: bool, read_retries: int, verbose: bool,
                 classes: Optional[str], preprocess: Optional[str], input_size: Optional[int], head,
                 multi_label: bool, threshold: float,
                 max_error_rate: Optional[float], retry_errors: bool, force_unlock: bool,
                 lease_seconds: float, dry_run: bool = False, relist: bool = False, **_: object):
    """The LabelConfig the parsed options describe (reads a --classes file, nothing else)."""
    from pipeline.json_option import parse_json_object
    from pipeline.label.config import mode_from_flags
    from pipeline.storage import storage_options as current_options

    options = parse_json_object(storage_options, "--storage-options")
    settings = model_settings(classes, preprocess, input_size, head, multi_label, threshold)
    return LabelConfig(
        source=source, output=output, model=model, weights=weights, top_k=top_k, batch_size=batch_size,
        batches_per_task=batches_per_task, concurrency=parse_concurrency(concurrency), num_gpus=num_gpus,
        cpus_per_decode=cpus_per_decode, cpus_per_actor=cpus_per_actor, mode=mode_from_flags(resume, overwrite),
        address=address, limit=limit, rows_per_file=rows_per_file,
        storage_options=options if options is not None else current_options(),
        resize=getattr(resize, "value", resize),  # None: the model's own (a fine-tuned model's, else squash)
        precision=getattr(precision, "value", precision), xla=xla, embeddings=embeddings, read_retries=read_retries, verbose=verbose,
        classes=settings.classes, preprocess=settings.preprocess, input_size=settings.input_size,
        head=settings.head, multi_label=settings.multi_label, threshold=settings.threshold,
        max_error_rate=max_error_rate, retry_errors=retry_errors, force_unlock=force_unlock,
        lease_seconds=lease_seconds, dry_run=dry_run, relist=relist,
    )


@app.command("label", cls=PlainHelpCommand)
def label_command(
    context: typer.Context,
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Folder or bucket prefix (recursive), glob, list file (.txt, .csv or .parquet with a 'path' column, or a glob of them), or an S3 Inventory manifest.json; local or fsspec URL.")],
    output: Annotated[str, typer.Argument(metavar="OUTPUT", help="Folder or bucket prefix for the Parquet results.")],
    model: Annotated[str, typer.Option(help="Registry name (see 'pipeline models'), fine-tuned model folder, or your own .keras / .h5 file or SavedModel folder.")] = LabelConfig.model,
    weights: Annotated[str, typer.Option(help="imagenet, none, or a .keras/.h5/.weights.h5 path or URL.")] = LabelConfig.weights,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes kept per image.")] = LabelConfig.top_k,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = LabelConfig.batch_size,
    batches_per_task: Annotated[int, typer.Option(
        min=1, help="Forward passes per Ray task (more: less overhead; fewer: finer retries).")] = LabelConfig.batches_per_task,
    concurrency: Annotated[str, typer.Option(
        help="Predictor actors: auto (one per GPU share, or per CPU core with room for decoding), N, or MIN,MAX to autoscale.")] = "auto",
    num_gpus: Annotated[float, typer.Option(min=0, help="GPUs per predictor actor (0.5 puts two on a GPU).")] = LabelConfig.num_gpus,
    cpus_per_decode: Annotated[float, typer.Option(min=0.01, help="CPUs reserved by each decode task.")] = LabelConfig.cpus_per_decode,
    cpus_per_actor: Annotated[float, typer.Option(
        min=0.01, help="CPUs reserved by each predictor actor (CPU actors run TensorFlow on that many threads, at least 1).")] = LabelConfig.cpus_per_actor,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a previous run in OUTPUT; skip paths already written.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the results already in OUTPUT.")] = False,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address; default: start a local Ray here.")] = LabelConfig.address,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Label only the first N images listed.")] = LabelConfig.limit,
    rows_per_file: Annotated[int, typer.Option(min=1, help=f"Rows per Parquet part file: exactly N, except a shorter part committed once {LabelConfig.seconds_per_file:g} s have passed since the last one (a slow job's rows are safe early) and the last part.")] = LabelConfig.rows_per_file,
    storage_options: Annotated[Optional[str], typer.Option(help="fsspec options as JSON (credentials, endpoint_url).")] = None,
    resize: Annotated[Optional[ResizeMode], typer.Option(
        help="squash: the whole image to the model's square (nothing cropped); center-crop: shorter side "
             "fitted, centre kept, as ImageNet models were evaluated. Default: what a fine-tuned model was "
             "trained with, else squash.", show_default=False)] = None,
    precision: Annotated[Precision, typer.Option(
        help="float32, or mixed: float16 compute with float32 weights (for GPUs with tensor cores; slower on CPU).")] = Precision(LabelConfig.precision),
    xla: Annotated[bool, typer.Option("--xla", help="Compile the forward pass with XLA.")] = LabelConfig.xla,
    embeddings: Annotated[bool, typer.Option(
        "--embeddings", help="Add an 'embedding' column: each image's pooled penultimate features (float16), "
                             "for near-duplicate search and clustering.")] = LabelConfig.embeddings,
    read_retries: Annotated[int, typer.Option(
        min=0, help="Rounds of re-reading an image after a transient storage error (0.5 s, 1 s, 2 s, ... apart); "
                    "what still fails is not stored and is left for --resume.")] = LabelConfig.read_retries,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Ray Data's logs and the workers' output (TensorFlow's too).")] = LabelConfig.verbose,
    classes: ClassesOption = None,
    preprocess: PreprocessOption = None,
    input_size: InputSizeOption = None,
    head: HeadOption = Head(LabelConfig.head),
    multi_label: MultiLabelOption = LabelConfig.multi_label,
    threshold: ThresholdOption = LabelConfig.threshold,
    max_error_rate: Annotated[Optional[float], typer.Option(
        help="Stop early when more than this share of images fail (e.g. 0.5: wrong credentials or bucket).")] = LabelConfig.max_error_rate,
    retry_errors: Annotated[bool, typer.Option(
        "--retry-errors", help="With --resume: label again the images whose rows hold an error.")] = LabelConfig.retry_errors,
    force_unlock: Annotated[bool, typer.Option(
        "--force-unlock", help="Take OUTPUT's lease from a run that was killed, without waiting for it to expire.")] = LabelConfig.force_unlock,
    lease_seconds: Annotated[float, typer.Option(
        help="A run's lease on OUTPUT expires this long after its last heartbeat.", hidden=True)] = LabelConfig.lease_seconds,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List SOURCE, compare it with OUTPUT and print how many images are listed, already done "
                          "and left to label; label nothing, start no Ray.")] = LabelConfig.dry_run,
    relist: Annotated[bool, typer.Option(
        "--relist", help="With --resume: list SOURCE again instead of reusing the listing recorded in OUTPUT "
                         "(new images get labeled, removed ones are reported).")] = LabelConfig.relist,
) -> None:
    """Label every image under SOURCE on Ray and write one Parquet row per image to OUTPUT."""
    from pipeline.cli.options import apply_storage_options
    from pipeline.label import run_label_job

    if verbose:
        show_everything()
    with user_errors(context):
        apply_storage_options(storage_options)  # also reaches this process's storage layer
        config = label_config(**{name: value for name, value in locals().items() if name != "context"})
        summary = run_label_job(config, progress=lambda line: typer.echo(line, err=True))
    typer.echo(summary.line(output))


@app.command("show", cls=PlainHelpCommand)
def show_command(
    output: Annotated[str, typer.Argument(metavar="OUTPUT", help="OUTPUT of a labeling job (folder or URL).")],
    label: Annotated[Optional[str], typer.Option(help="Only rows with this top-1 label.")] = None,
    min_score: Annotated[Optional[float], typer.Option(help="Only rows whose top-1 score is at least this.")] = None,
    errors: Annotated[bool, typer.Option("--errors", help="Only list the rows that failed.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Rows to list in each section, and labels counted.")] = 10,
    all_labels: Annotated[bool, typer.Option("--all", help="Count every label, not only the --limit most common.")] = False,
    storage_options: Annotated[Optional[str], typer.Option(help="fsspec options as JSON.")] = None,
) -> None:
    """Print label counts, the least confident rows and the errors of a labeling job's OUTPUT."""
    from pipeline.cli.options import apply_storage_options
    from pipeline.label.lease import Lease
    from pipeline.label.manifest import read_manifest
    from pipeline.results import summarize

    with user_errors():
        apply_storage_options(storage_options)
        running = Lease.live_holder(output)
        if running is not None:
            typer.echo(f"a run is in progress (lease held by {running.describe()}): what follows is what it has "
                       "committed so far", err=True)
        manifest = read_manifest(output)
        summary = summarize(output, label=label, min_score=min_score, limit=limit)
    typer.echo(f"{plural(summary.rows, 'row')}, {plural(summary.errors, 'error')}")
    if not errors:
        counts = summary.label_counts if all_labels else summary.label_counts.head(limit)
        typer.echo("\nlabel counts:")
        for name, count in counts.items():
            typer.echo(f"  {count:>7}  {name}")
        if len(counts) < len(summary.label_counts):
            left = len(summary.label_counts) - len(counts)
            typer.echo(f"  ... {plural(left, 'more label')} ({plural(summary.label_counts.iloc[len(counts):].sum(), 'row')}); "
                       "--all lists them")
        typer.echo("\nleast confident:")
        for row in summary.lowest.itertuples():
            typer.echo(f"  {row.score:6.1%}  {row.label:<25} {row.path}")
    typer.echo("\nerrors:" if summary.errors else "\nerrors: none")
    for row in summary.error_rows.itertuples():
        typer.echo(f"  {row.path}: {row.error}")
    if manifest is not None:
        typer.echo("\nrun manifest (what every row was made with):")
        for line in manifest.lines():
            typer.echo(f"  {line}")
