"""``pipeline finetune``: train a new head (then the top of the base) on class-per-folder images with Ray Train."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pipeline.cli.app import app, user_errors
from pipeline.cli.help_format import PlainHelpCommand
from pipeline.cli.options import ResizeMode
from pipeline.console_noise import show_everything
from pipeline.errors import UserError
from pipeline.finetune.job import FinetuneConfig

# Every default below is FinetuneConfig's (one place): the CLI, jobs/ and 'pipeline submit' cannot drift from
# what the library does when called directly.


def parse_unfreeze(text: str) -> int | None:
    """'all' -> None (the whole base); 'N' -> the top N layers."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise UserError(f"--unfreeze '{text}' should be a number of layers (0 or more) or 'all'")
    return value


def unfreeze_text(layers: int | None) -> str:
    """The --unfreeze spelling of FinetuneConfig.unfreeze (the inverse of parse_unfreeze)."""
    return "all" if layers is None else str(layers)


def _checked_augment(value: str) -> str:
    """Parse-time check, so 'pipeline submit finetune' refuses a bad --augment before uploading anything."""
    from pipeline.finetune.model import parse_augment

    try:
        parse_augment(value)
    except UserError as err:
        raise typer.BadParameter(str(err)) from None
    return value


def _checked_mode(ctx: typer.Context, param: typer.CallbackParam, value: bool) -> bool:
    """--resume with --overwrite is refused while parsing (whichever comes second sees the first)."""
    from pipeline.finetune.job import check_mode

    other = "overwrite" if param.name == "resume" else "resume"
    try:
        check_mode(value, bool(ctx.params.get(other)))
    except UserError as err:
        raise typer.BadParameter(str(err)) from None
    return value


def finetune_config(data: str, output: str, base: str, workers: int, use_gpu: bool, epochs: int,
                    fine_tune_epochs: int, unfreeze: str, batch_size: int, lr: float, fine_tune_lr_factor: float,
                    lr_schedule: str, dropout: float, val_fraction: float, val: Optional[str], path_column: str,
                    label_column: str, min_score: Optional[float],
                    image_size: Optional[int], resize, augment: str, no_augment: bool, cache_features: bool,
                    decode: str, best_by: str, patience: int, seed: int, shuffle_buffer: int, resume: bool, overwrite: bool,
                    address: Optional[str], cpus_per_worker: float, storage_options: Optional[str],
                    read_retries: int, verbose: bool, **_: object) -> FinetuneConfig:
    """The FinetuneConfig the parsed options describe (it checks itself: UserError)."""
    from pipeline.storage import storage_options as current_options

    return FinetuneConfig(
        data=data, output=output, base=base, workers=workers, use_gpu=use_gpu, cpus_per_worker=cpus_per_worker,
        epochs=epochs, fine_tune_epochs=fine_tune_epochs, unfreeze=parse_unfreeze(unfreeze),
        batch_size=batch_size, lr=lr, fine_tune_lr_factor=fine_tune_lr_factor, lr_schedule=lr_schedule,
        dropout=dropout, val_fraction=val_fraction, val=val, path_column=path_column, label_column=label_column,
        min_score=min_score, image_size=image_size,
        resize=getattr(resize, "value", resize), augment="none" if no_augment else augment,
        cache_features=cache_features, decode=decode, best_by=best_by, patience=patience, seed=seed,
        shuffle_buffer=shuffle_buffer, resume=resume, overwrite=overwrite, address=address,
        storage_options=storage_options if storage_options else current_options(), read_retries=read_retries,
        verbose=verbose,
    )


@app.command("finetune", cls=PlainHelpCommand)
def finetune_command(
    data: Annotated[str, typer.Argument(metavar="DATA", help="Training images: one subfolder per class, or a labels table (CSV or Parquet with path and label columns; a folder or glob of them; a 'pipeline label' OUTPUT); local or fsspec URL.")],
    output: Annotated[str, typer.Argument(metavar="OUTPUT", help="Folder or URL for checkpoints, history.csv, curves.png and the model.")],
    base: Annotated[str, typer.Option(help="Registry name of the pretrained base (see 'pipeline models'), or a folder written by 'pipeline finetune' to train further (same classes: its head is kept; other classes: a new head).")] = FinetuneConfig.base,
    workers: Annotated[int, typer.Option(min=1, help="Ray Train workers (data-parallel replicas).")] = FinetuneConfig.workers,
    use_gpu: Annotated[bool, typer.Option("--use-gpu", help="Give each worker one GPU.")] = FinetuneConfig.use_gpu,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs training the new head with the base frozen.")] = FinetuneConfig.epochs,
    fine_tune_epochs: Annotated[int, typer.Option(min=0, help="Further epochs with the top of the base unfrozen.")] = FinetuneConfig.fine_tune_epochs,
    unfreeze: Annotated[str, typer.Option(help="Base layers unfrozen for fine-tuning: N (top N) or 'all'.")] = unfreeze_text(FinetuneConfig.unfreeze),
    batch_size: Annotated[int, typer.Option(min=1, help="Images per worker per step (global batch = this x workers).")] = FinetuneConfig.batch_size,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak Adam learning rate for the head (stage 1); stage 2 uses --lr x --fine-tune-lr-factor.")] = FinetuneConfig.lr,
    fine_tune_lr_factor: Annotated[float, typer.Option(help="Stage 2 (fine-tuning) peak learning rate = --lr x this.")] = FinetuneConfig.fine_tune_lr_factor,
    lr_schedule: Annotated[str, typer.Option(help="cosine (warmup, then cosine decay, per stage) or constant.")] = FinetuneConfig.lr_schedule,
    dropout: Annotated[float, typer.Option(help="Dropout before the new dense layer.")] = FinetuneConfig.dropout,
    val_fraction: Annotated[float, typer.Option(help="Share of each class held out for validation (chosen per file by a hash of its path).")] = FinetuneConfig.val_fraction,
    val: Annotated[Optional[str], typer.Option(help="Separate validation images: a folder with the same class subfolders, or a labels table.")] = FinetuneConfig.val,
    path_column: Annotated[str, typer.Option(help="Labels tables: the column of image paths (relative paths are relative to the table's folder).")] = FinetuneConfig.path_column,
    label_column: Annotated[str, typer.Option(help="Labels tables: the column of class names.")] = FinetuneConfig.label_column,
    min_score: Annotated[Optional[float], typer.Option(help="Labels tables with a score column (a 'pipeline label' OUTPUT): train only on rows scored at least this.")] = FinetuneConfig.min_score,
    image_size: Annotated[Optional[int], typer.Option(help="Train at SxS pixels (default: the base's native size).")] = FinetuneConfig.image_size,
    resize: Annotated[ResizeMode, typer.Option(
        help="squash (the whole image) or center-crop (shorter side fitted, centre kept); recorded in the "
             "model, and 'pipeline label --model OUTPUT' uses it unless told otherwise.")] = ResizeMode(FinetuneConfig.resize),
    augment: Annotated[str, typer.Option(callback=_checked_augment, help="Random transforms on training images, comma-separated from flip,rotate,zoom,contrast, or 'none'. No flip for digits, text or signs.")] = ",".join(FinetuneConfig.augment) or "none",
    no_augment: Annotated[bool, typer.Option("--no-augment", help="Same as --augment none.")] = False,
    cache_features: Annotated[bool, typer.Option("--cache-features", help="With a frozen base and --augment none: compute the base's features once, then train the head on them.")] = FinetuneConfig.cache_features,
    decode: Annotated[str, typer.Option(
        help="once: decode the images once into Ray's object store (spilled to disk beyond it); every-epoch: "
             "decode them again each epoch, streamed (no decoded image kept between epochs; needs CPUs beside "
             "the workers'); auto: once when the decoded images take at most half the object store.")] = FinetuneConfig.decode,
    best_by: Annotated[str, typer.Option(help="Export the epoch with the best val_accuracy or val_loss.")] = FinetuneConfig.best_by,
    patience: Annotated[int, typer.Option(min=0, help="End a stage after N epochs without a better --best-by (0: off).")] = FinetuneConfig.patience,
    seed: Annotated[int, typer.Option(help="Seed of the new head and of the training order.")] = FinetuneConfig.seed,
    shuffle_buffer: Annotated[int, typer.Option(min=1, help="Images each worker shuffles locally (on top of a per-epoch block shuffle).")] = FinetuneConfig.shuffle_buffer,
    resume: Annotated[bool, typer.Option("--resume", callback=_checked_mode, help="Continue from the last checkpoint in OUTPUT (same data and settings).")] = FinetuneConfig.resume,
    overwrite: Annotated[bool, typer.Option("--overwrite", callback=_checked_mode, help="Discard a previous run in OUTPUT.")] = FinetuneConfig.overwrite,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address; default: start a local Ray here.")] = FinetuneConfig.address,
    cpus_per_worker: Annotated[float, typer.Option(min=0.01, help="CPUs Ray reserves for each worker.")] = FinetuneConfig.cpus_per_worker,
    storage_options: Annotated[Optional[str], typer.Option(help="fsspec options as JSON (credentials, endpoint_url).")] = None,
    read_retries: Annotated[int, typer.Option(
        min=0, help="Rounds of re-reading an image after a transient storage error (0.5 s, 1 s, 2 s, ... apart); "
                    "if some still fail, nothing is trained and the job exits 1.")] = FinetuneConfig.read_retries,
    verbose: Annotated[bool, typer.Option(
        "--verbose", help="Show the workers' output (TensorFlow, Ray Train, Ray Data), not just the epoch lines.")] = FinetuneConfig.verbose,
) -> None:
    """Fine-tune a pretrained model on DATA with Ray Train and export it to OUTPUT for 'pipeline label --model OUTPUT'."""
    from pipeline.finetune.job import run_finetune

    if verbose:
        show_everything()
    with user_errors():
        config = finetune_config(**locals())
        summary = run_finetune(config, progress=lambda line: typer.echo(line, err=True))
    typer.echo(summary.line(output))
