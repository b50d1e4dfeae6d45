"""What a labeling run is asked to do (LabelConfig) and what it did (LabelSummary)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.models.registry import DEFAULT_MODEL
from pipeline.models.user_model import ModelSettings


@dataclass
class LabelConfig:
    source: str  # folder, glob or list file; local or fsspec URL
    output: str  # folder or bucket prefix for the Parquet parts
    model: str = DEFAULT_MODEL  # registry name or fine-tuned artifact location
    weights: str = "imagenet"  # imagenet | none | weights file path/URL
    top_k: int = 5  # classes kept per image
    batch_size: int = 32  # images per forward pass
    batches_per_task: int = 4  # forward passes per Ray task: fewer, larger tasks cut scheduling overhead
    concurrency: tuple[int, int] | None = None  # predictor actors: (min, max); None: as many as fit (auto)
    num_gpus: float = 0.0  # GPUs per predictor actor (fractions share a GPU)
    cpus_per_decode: float = 0.25  # CPUs reserved by each decode task (1.7 ms an image; waits on storage)
    cpus_per_actor: float = 0.75  # CPUs reserved by each predictor actor; CPU actors run TF on that many threads
    mode: str = "new"  # new | resume | overwrite
    address: str | None = None  # Ray cluster to join; None starts a local one
    limit: int | None = None  # label only the first N listed images
    rows_per_file: int = 10_000  # rows per committed part file
    seconds_per_file: float = 30.0  # also commit at least this often
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options
    resize: str = "squash"  # squash (whole image) | center-crop (shorter side fits, centre kept)
    precision: str = "float32"  # float32 | mixed (mixed_float16: float16 compute on GPUs)
    xla: bool = False  # compile the forward pass with XLA
    read_retries: int = 5  # rounds of re-reading objects after a transient error (0.5 s, 1 s, 2 s, ... apart)
    verbose: bool = False  # show Ray Data's logs and the workers' output, not just our progress line
    progress: bool = True  # print the progress line while labeling
    # How to read a model file the user trained (--model PATH.keras/.h5/SavedModel); see ModelSettings.
    classes: tuple[str, ...] | None = None  # output index -> name; None: class_0..class_{n-1}
    preprocess: str | None = None  # rescale|caffe|tf|torch|none|<registry name>
    input_size: int | None = None  # only when the model's input shape leaves the size open
    head: str = "auto"  # auto|softmax|sigmoid|logits
    multi_label: bool = False  # write every class at or above ``threshold``
    threshold: float = 0.5  # multi-label cut-off

    @property
    def model_settings(self) -> ModelSettings:
        return ModelSettings(self.classes, self.preprocess, self.input_size, self.head, self.multi_label,
                             self.threshold)


@dataclass
class LabelSummary:
    listed: int  # images found in SOURCE (after --limit)
    skipped: int  # already in OUTPUT (resume)
    labeled: int  # rows written by this run
    errors: int  # rows written with an error
    ignored: int  # non-image files in SOURCE
    seconds: float
    transient: int = 0  # images whose reads still failed after retries: not stored, left for --resume
    startup_seconds: float = 0.0  # from the start to the first result (Ray, TensorFlow, model load)
    steady_images_per_second: float = 0.0  # rate after the first result arrived
    first_transient: str = ""  # "path: error" of the first image held back, for the message

    @property
    def images_per_second(self) -> float:
        return self.labeled / self.seconds if self.seconds > 0 else 0.0

    def line(self, output: str) -> str:
        line = (f"labeled {self.labeled} images ({self.errors} errors, {self.ignored} ignored files, "
                f"{self.skipped} already done) in {self.seconds:.1f} s: {self.images_per_second:.1f} images/s")
        if self.labeled:
            line += (f" ({self.startup_seconds:.1f} s to the first result, "
                     f"steady {self.steady_images_per_second:.1f} images/s)")
        if self.transient:
            line += f"; {self.transient} images not read (transient storage errors), left for --resume"
        return f"{line} -> {output}"
