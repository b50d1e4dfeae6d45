"""What ``pipeline finetune --resume`` does with each option: continue, apply, or refuse; never ignore.

Every epoch checkpoint's ``state.json`` records the run's identity (its data, base, image size, resize) and
its settings (``recorded_settings``). A resume compares them with the options given now, before Ray starts:

- ``IDENTITY``: what the images and their labels are (class names, and a digest of which file is on which
  side of the split with which label). Another value that changes them is refused (``check_same_run``).
- ``FIXED``: what the checkpointed weights and Adam state mean (global batch, learning rates, schedule,
  dropout, augmentation, seed, ...). Another value is refused, naming each option and both values: the
  run would silently become a mix of two trainings.
- ``EPOCH_COUNTS``: how long each stage trains. The run continues to the new count from its checkpoint
  when it has not trained past it, and the change is recorded (``state.json``'s ``resumes``, the exported
  model's ``trained``); a count the run has already passed, or a stage that is over, is refused.
- ``RUN``: how the job runs, not what it trains (cluster, CPUs, retries, patience, console). The value
  given now is used.

A run with nothing left to train is finished from its checkpoint without Ray (``ResumePlan.finished``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline import storage
from pipeline.errors import UserError
from pipeline.plural import plural

if TYPE_CHECKING:
    from pipeline.finetune.job import FinetuneConfig

RUN_NAME = "checkpoints"  # Ray Train's run folder inside OUTPUT: one subfolder per epoch checkpoint

IDENTITY = ("data", "val", "val_fraction", "path_column", "label_column", "min_score", "base", "image_size", "resize")
FIXED = ("workers", "batch_size", "lr", "fine_tune_lr_factor", "lr_schedule", "dropout", "augment",
         "cache_features", "unfreeze", "best_by", "seed", "shuffle_buffer")
EPOCH_COUNTS = ("epochs", "fine_tune_epochs")
RUN = ("output", "resume", "overwrite", "patience", "address", "use_gpu", "cpus_per_worker", "decode",
       "storage_options", "read_retries", "verbose")


def option_name(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def recorded_settings(config: "FinetuneConfig") -> dict[str, Any]:
    """The settings a checkpoint records (JSON values): FIXED, EPOCH_COUNTS and patience."""
    values = {name: getattr(config, name) for name in (*FIXED, *EPOCH_COUNTS, "patience")}
    values["augment"] = list(values["augment"])
    return values


@dataclass
class ResumePlan:
    """How a resumed run goes on from its last checkpoint."""

    after_epoch: int  # the checkpoint's epoch
    stage1_end: int  # the last epoch of stage 1 (head only) from now on
    total_epochs: int  # the run ends after this epoch (or earlier, by --patience)
    finished: bool  # nothing is left to train: export from the checkpoint
    changes: dict[str, list[Any]] = field(default_factory=dict)  # option -> [checkpoint's value, new value]
    notes: list[str] = field(default_factory=list)  # what the resume does differently, for the console
    checkpoint: str | None = None  # the checkpoint's folder in OUTPUT


def last_checkpoint_state(output: str) -> tuple[str, dict[str, Any]] | None:
    """(folder, state.json) of the newest epoch checkpoint in OUTPUT, or None when there is none."""
    from pipeline.finetune.worker import STATE_FILE

    fs, root = storage.filesystem(storage.join(output, RUN_NAME))
    try:
        folders = sorted(p for p in fs.glob(storage.join(root, "epoch_*")) if fs.exists(storage.join(p, STATE_FILE)))
    except FileNotFoundError:
        return None
    if not folders:
        return None
    with fs.open(storage.join(folders[-1], STATE_FILE), "r") as f:
        return storage.full_url(fs, folders[-1], output), json.load(f)


def check_same_run(saved: dict[str, Any] | None, current: dict[str, Any], output: str) -> None:
    """UserError naming what differs between the checkpointed run's identity and this one's."""
    if saved is None:
        raise UserError(f"the run in OUTPUT '{output}' was checkpointed by an older version that did not record "
                        "its data and settings; it cannot be resumed safely: use --overwrite or another OUTPUT")
    differences = []
    if saved.get("class_names") != current["class_names"]:
        added = sorted(set(current["class_names"]) - set(saved.get("class_names") or []))
        gone = sorted(set(saved.get("class_names") or []) - set(current["class_names"]))
        differences.append(f"class folders (new now: {', '.join(added) or 'none'}; "
                           f"missing now: {', '.join(gone) or 'none'})")
    # Checkpoints written before --resize existed were trained on squashed images.
    for key, name, older in (("base", "--base", None), ("image_size", "--image-size", None),
                             ("resize", "--resize", "squash")):
        if saved.get(key, older) != current.get(key, older):
            differences.append(f"{name} ({saved.get(key, older)} in the checkpoint, {current.get(key, older)} now)")
    if not differences and saved.get("split_digest") != current["split_digest"]:
        differences.append("training/validation files (images added, removed or renamed in DATA or --val, "
                           "or another --val-fraction)")
    if differences:
        raise UserError(f"--resume refused: the run in OUTPUT '{output}' was trained with different "
                        f"{'; '.join(differences)}; resume with the same data and settings, or start over "
                        "with --overwrite or another OUTPUT")


def _shown(value: Any) -> str:
    if value is None:  # --unfreeze all
        return "all"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def plan_resume(config: "FinetuneConfig", state: dict[str, Any]) -> ResumePlan:
    """How ``config`` goes on from a checkpoint's ``state`` (see the module docstring); UserError (exit 2)
    naming each option it cannot honour."""
    output = config.output
    saved = state.get("settings") or {}  # a checkpoint from before settings were recorded: what it has
    now = recorded_settings(config)
    fixed = [f"{option_name(name)} {_shown(saved[name])} in the checkpoint, {_shown(now[name])} now"
             for name in FIXED if name in saved and saved[name] != now[name]]
    if fixed:
        raise UserError(f"--resume refused: the run in OUTPUT '{output}' was trained with other settings "
                        f"({'; '.join(fixed)}); the checkpointed weights and optimizer belong to those. Resume "
                        "with the run's values, or start over with --overwrite or another OUTPUT")
    done, stage, finished = int(state["epoch"]), int(state["stage"]), bool(state["finished"])
    stage1_end = int(state["stage1_end"])
    saved_epochs = int(saved.get("epochs", stage1_end))
    saved_fine = saved.get("fine_tune_epochs")
    plan = ResumePlan(done, stage1_end, 0, finished)
    stopped = (f"the run in OUTPUT '{output}' stopped early after epoch {done} (no better {config.best_by} for "
               f"--patience {saved.get('patience', config.patience)} epochs), and its model is exported")

    if config.epochs != saved_epochs:
        if finished:
            raise UserError(f"--epochs {config.epochs}: {stopped}; to train further, start a new run with "
                            "--overwrite or another OUTPUT")
        if stage == 2 or stage1_end < saved_epochs:
            raise UserError(f"--epochs {config.epochs}: stage 1 (the head alone) of the run in OUTPUT '{output}' "
                            f"is over: it ended after epoch {stage1_end}"
                            + (" (--patience)" if stage1_end < saved_epochs else "")
                            + f"; resume with --epochs {saved_epochs}, or start over with --overwrite")
        if config.epochs < done:
            raise UserError(f"--epochs {config.epochs}: the run in OUTPUT '{output}' has trained {plural(done, 'epoch')} of "
                            f"stage 1 already; pass --epochs {done} or more (or {saved_epochs}, as it was "
                            "started), or start over with --overwrite")
        plan.stage1_end = config.epochs
        plan.changes["epochs"] = [saved_epochs, config.epochs]
        schedule = ("; the cosine learning rate is spread over the new stage length from the step it reached"
                    if config.lr_schedule == "cosine" else "")
        plan.notes.append(f"--epochs {config.epochs} (the checkpoint's run had {saved_epochs}): stage 1 continues "
                          f"after epoch {done} to epoch {config.epochs}{schedule}")
    if saved_fine is not None and config.fine_tune_epochs != int(saved_fine):
        if finished:
            raise UserError(f"--fine-tune-epochs {config.fine_tune_epochs}: {stopped}; to train further, start "
                            "a new run with --overwrite or another OUTPUT")
        fine_done = done - plan.stage1_end if stage == 2 else 0
        if config.fine_tune_epochs < fine_done:
            raise UserError(f"--fine-tune-epochs {config.fine_tune_epochs}: the run in OUTPUT '{output}' has "
                            f"fine-tuned {plural(fine_done, 'epoch')} already; pass --fine-tune-epochs {fine_done} or more "
                            f"(or {saved_fine}, as it was started), or start over with --overwrite")
        plan.changes["fine_tune_epochs"] = [int(saved_fine), config.fine_tune_epochs]
        plan.notes.append(f"--fine-tune-epochs {config.fine_tune_epochs} (the checkpoint's run had {saved_fine}): "
                          f"the run now ends after epoch {plan.stage1_end + config.fine_tune_epochs}")
    plan.total_epochs = plan.stage1_end + config.fine_tune_epochs
    plan.finished = finished or done >= plan.total_epochs
    return plan
