"""What the driver tells every fine-tuning worker: one frozen dataclass that Ray pickles to the workers.

It imports nothing heavy, so a worker unpickles it without the driver's side of the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WorkerSettings:
    """The settings ``pipeline.finetune.worker`` trains with, resolved by the driver (``job._fit``)."""

    base: str  # registry name of the backbone: builds the model and picks its preprocess_input
    start_from: str | None  # a fine-tuned model folder a new run takes its weights from; None: ImageNet weights
    keep_head: bool  # start_from has these classes in this order: its head is kept, not only its backbone
    storage_options: dict[str, Any] = field(repr=False)  # fsspec options to read start_from (repr: may hold keys)
    image_size: int  # square side of the decoded images and of the model's input
    num_classes: int  # width of the new head and of the validation confusion matrix
    fine_tune_epochs: int  # length of stage 2 (top of the base unfrozen); 0: no stage 2
    unfreeze: int | None  # base layers stage 2 makes trainable (None: all); BatchNorm stays frozen
    batch_size: int  # images per worker per step; the loss is divided by this x workers
    lr: float  # stage 1 peak learning rate
    fine_tune_lr_factor: float  # stage 2 peak learning rate = lr x this
    lr_schedule: str  # cosine | constant: the shape of each stage's learning rate
    dropout: float  # rate of the head's dropout layer, set when the model is built
    augment: tuple[str, ...]  # random transforms on training batches (names from pipeline.finetune.model)
    cache_features: bool  # frozen base, no augmentation: pool the base's features once, train the head on them
    cpus_per_worker: float  # CPUs Ray reserved for this worker: sizes TensorFlow's thread pools
    monitor: str  # val_accuracy | val_loss: what makes an epoch the best one (exported, and patience's measure)
    patience: int  # end a stage after this many epochs without a better monitor (0: never)
    seed: int  # the new head's initialization (the same on every worker) and every shuffle and random draw
    shuffle_buffer: int  # rows each worker shuffles locally while reading its shard
    identity: dict[str, Any]  # classes, base, size, resize, split digest: state.json keeps it for --resume's check
    recorded_settings: dict[str, Any]  # pipeline.finetune.resume.recorded_settings: state.json keeps it for --resume
    stage1_end: int  # the last epoch of stage 1 as the driver plans it (a resume may lengthen stage 1)
    resume_changes: dict[str, list[Any]]  # option -> [checkpoint's value, new value]: recorded with the resume
    steps_per_epoch: int  # optimizer steps per epoch on each worker: the length of the learning rate schedule
