"""The CLI asks the library for what the library's own defaults say, and passes every option through.

``pipeline label SRC OUT`` must describe exactly ``LabelConfig(SRC, OUT)`` (and ``finetune`` exactly
``FinetuneConfig``): the CLI, ``jobs/*.py`` and ``pipeline submit`` all parse with these commands, so a
default written twice would make a cluster job differ from the same job called from Python.
"""

from __future__ import annotations

import dataclasses
import inspect

from pipeline.classification import classify
from pipeline.cli.finetune import finetune_config
from pipeline.cli.models import classify_command
from pipeline.cli.label import label_config
from pipeline.finetune.job import FinetuneConfig
from pipeline.label.config import LabelConfig
from pipeline.submit import validate_job_args


def _parsed(command: str, args: list[str]) -> dict:
    """The options as the real parser reads them (the one 'pipeline submit' checks with), without running."""
    return validate_job_args(command, args)


def _changed(config, default) -> set[str]:
    return {f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(default, f.name)}


def test_label_without_options_is_the_library_default():
    assert label_config(**_parsed("label", ["SRC", "OUT"])) == LabelConfig("SRC", "OUT")


def test_every_label_option_reaches_its_setting():
    args = ["SRC", "OUT", "--model", "resnet50", "--weights", "none", "--top-k", "3", "--batch-size", "16",
            "--batches-per-task", "2", "--concurrency", "1,2", "--num-gpus", "0.5", "--cpus-per-decode", "0.5",
            "--cpus-per-actor", "1", "--resume", "--address", "auto", "--limit", "7", "--rows-per-file", "9",
            "--storage-options", '{"anon": true}', "--resize", "center-crop", "--precision", "mixed", "--xla",
            "--embeddings", "--read-retries", "1", "--verbose", "--classes", "a,b", "--preprocess", "tf",
            "--input-size", "64", "--head", "sigmoid", "--multi-label", "--threshold", "0.3",
            "--max-error-rate", "0.1", "--retry-errors", "--force-unlock", "--lease-seconds", "5",
            "--dry-run", "--relist"]
    config = label_config(**_parsed("label", args))
    not_options = {"source", "output", "seconds_per_file", "progress"}  # arguments, or library-only settings
    assert _changed(config, LabelConfig("SRC", "OUT")) == {f.name for f in dataclasses.fields(LabelConfig)} - not_options
    assert config.concurrency == (1, 2) and config.classes == ("a", "b") and config.mode == "resume"


def test_finetune_without_options_is_the_library_default():
    assert finetune_config(**_parsed("finetune", ["DATA", "OUT"])) == FinetuneConfig("DATA", "OUT")


def test_every_finetune_option_reaches_its_setting():
    args = ["DATA", "OUT", "--base", "resnet50", "--workers", "1", "--use-gpu", "--epochs", "2",
            "--fine-tune-epochs", "1", "--unfreeze", "all", "--batch-size", "8", "--lr", "0.01",
            "--fine-tune-lr-factor", "0.5", "--lr-schedule", "constant", "--dropout", "0.1", "--val-fraction", "0.3",
            "--val", "VAL", "--image-size", "64", "--resize", "center-crop", "--augment", "flip", "--best-by",
            "val_loss", "--patience", "2", "--seed", "7", "--shuffle-buffer", "10", "--overwrite", "--address", "auto",
            "--cpus-per-worker", "2", "--storage-options", '{"anon": true}', "--read-retries", "1", "--verbose",
            "--path-column", "file", "--label-column", "truth", "--min-score", "0.9", "--decode", "every-epoch"]
    config = finetune_config(**_parsed("finetune", args))
    # --cache-features excludes augmentation and stage 2, --resume excludes --overwrite: checked below
    apart = {"data", "output", "cache_features", "resume"}
    assert _changed(config, FinetuneConfig("DATA", "OUT")) == {f.name for f in dataclasses.fields(FinetuneConfig)} - apart
    assert config.unfreeze is None and config.augment == ("flip",)
    cached = finetune_config(**_parsed("finetune", ["DATA", "OUT", "--cache-features", "--no-augment", "--resume"]))
    assert _changed(cached, FinetuneConfig("DATA", "OUT")) == {"cache_features", "augment", "resume"}


def test_classify_defaults_are_the_library_and_the_labeling_jobs():
    """``pipeline classify`` is how a user checks a model before a cluster job: its defaults must be what
    ``classify()`` does and what ``pipeline label`` stores."""
    command, library = inspect.signature(classify_command).parameters, inspect.signature(classify).parameters
    shared = ("model", "weights", "top_k", "batch_size")
    assert {name: command[name].default for name in shared} == {name: library[name].default for name in shared}
    default = LabelConfig("SRC", "OUT")
    assert {name: library[name].default for name in shared} == {name: getattr(default, name) for name in shared}
    assert library["retries"].default == default.read_retries
