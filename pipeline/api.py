"""The Python API: ``pipeline.label``, ``pipeline.finetune`` and ``pipeline.predict``, with the CLI's keywords.

Each takes the options of its command as keywords spelled as the command's options with underscores
(``--top-k 3`` is ``top_k=3``, ``--resume`` is ``resume=True``), with the same defaults, because both
go through the same parser to the same config (``pipeline.cli``). Python values are taken where the
command takes text: ``concurrency=4`` or ``(1, 8)``, ``classes=["cat", "dog"]``, and ``storage_options={...}``
(the JSON options' parser takes a dict as it is).
An unknown keyword is a TypeError naming the closest option; a bad value is the command's UserError.
"""

from __future__ import annotations

import difflib
import sys
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import ray.data

    from pipeline.finetune.job import FinetuneSummary
    from pipeline.label.config import LabelSummary

__all__ = ["finetune", "label", "predict"]

# The options of 'pipeline label' that describe how to predict, not a job over SOURCE and OUTPUT.
PREDICT_OPTIONS = ("model", "weights", "top_k", "batch_size", "batches_per_task", "concurrency", "num_gpus",
                   "cpus_per_decode", "cpus_per_actor", "storage_options", "resize", "precision", "xla",
                   "embeddings", "read_retries", "classes", "preprocess", "input_size", "head", "multi_label",
                   "threshold")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def label(source: str, output: str, *, progress: Callable[[str], None] | None = _to_stderr,
          **options: Any) -> LabelSummary:
    """``pipeline label SOURCE OUTPUT``: label every image under ``source`` on Ray into Parquet at ``output``.

    Returns the summary the command prints (``labeled``, ``errors``, ``skipped``, ``steady_images_per_second``,
    ...). ``progress`` gets the lines the command prints before and while it runs (None: silent).
    """
    from pipeline.cli.label import label_config
    from pipeline.label import run_label_job

    config = label_config(**command_parameters("label", "pipeline.label", {"source": source, "output": output},
                                               options))
    return run_label_job(config, progress=progress or _silent)


def finetune(data: str, output: str, *, progress: Callable[[str], None] | None = _to_stderr,
             **options: Any) -> FinetuneSummary:
    """``pipeline finetune DATA OUTPUT``: fine-tune a pretrained model on ``data`` with Ray Train and export it
    to ``output``, which ``label(..., model=output)`` and ``predict(..., model=output)`` then load."""
    from pipeline.cli.finetune import finetune_config
    from pipeline.finetune.job import run_finetune

    config = finetune_config(**command_parameters("finetune", "pipeline.finetune", {"data": data, "output": output},
                                                  options))
    return run_finetune(config, progress=progress or _silent)


def predict(dataset: ray.data.Dataset, **options: Any) -> ray.data.Dataset:
    """``dataset`` with the prediction columns of a labeling OUTPUT added to every row (``label``, ``score``,
    ``top_labels``, ``top_scores``, ``top_ids``, ``model``, ``weights_digest``, ``error``; ``embedding`` with
    ``embeddings=True``); the rows keep their own columns.

    The images are the rows' ``image`` column (decoded pixels of any size, as ``ray.data.read_images`` gives
    them), else ``bytes`` (encoded files, as ``read_binary_files`` gives them), else ``path`` (paths or URLs,
    read as ``pipeline label`` reads them). Lazy, like any Dataset: nothing runs until it is consumed. Takes the
    options of ``pipeline label`` that say how to predict (model, weights, top_k, batch_size, concurrency,
    num_gpus, resize, embeddings, ...).
    """
    from pipeline.cli.label import label_config
    from pipeline.dataset_predictions import predict_dataset

    unknown = sorted(set(options) - set(PREDICT_OPTIONS))
    if unknown:
        raise TypeError(f"pipeline.predict() got {_unexpected(unknown, PREDICT_OPTIONS)}; it takes "
                        f"{', '.join(PREDICT_OPTIONS)}")
    parameters = command_parameters("label", "pipeline.predict", {"source": "<dataset>", "output": "<dataset>"},
                                    options)
    return predict_dataset(dataset, label_config(**parameters))


def command_parameters(command: str, caller: str, positional: dict[str, str],
                       options: dict[str, Any]) -> dict[str, Any]:
    """What ``pipeline <command>`` would have parsed: its defaults, ``positional``, and ``options`` (TypeError
    for a keyword the command does not have)."""
    defaults = cli_defaults(command)
    unknown = sorted(name for name in options if name not in defaults or name in positional)
    if unknown:
        raise TypeError(f"{caller}() got {_unexpected(unknown, [n for n in defaults if n not in positional])}")
    return {**defaults, **positional, **{name: cli_value(name, value) for name, value in options.items()}}


@lru_cache(maxsize=None)
def cli_defaults(command: str) -> dict[str, Any]:
    """Each parameter of ``pipeline <command>`` and its default, read from the command itself."""
    import typer.main

    from pipeline.cli import app

    return {param.name: param.default for param in typer.main.get_command(app).commands[command].params}


def cli_value(name: str, value: Any) -> Any:
    """A Python value in the form the command's parser gives it."""
    if name == "concurrency" and isinstance(value, int):
        return str(value)
    if name == "concurrency" and isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if name == "classes" and isinstance(value, (tuple, list)):
        if any("," in str(v) for v in value):
            raise ValueError(f"classes={list(value)!r}: a class name with a comma needs a classes file (one "
                             "name per line)")
        return ",".join(str(v) for v in value)
    return value


def _unexpected(unknown: list[str], known) -> str:
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, list(known), n=1)
        parts.append(f"an unexpected keyword argument '{name}'" + (f" (did you mean {close[0]}?)" if close else ""))
    return "; ".join(parts)


def _silent(line: str) -> None:
    pass
