"""What a labeling run is asked to do (LabelConfig) and what it did (LabelSummary)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import UserError
from pipeline.fetch import DEFAULT_RETRIES
from pipeline.models.registry import DEFAULT_MODEL
from pipeline.models.user_model import ModelSettings
from pipeline.plural import plural

MODES = ("new", "resume", "overwrite")
PRECISIONS = ("float32", "mixed")
RESIZE_MODES = ("squash", "center-crop")


def mode_from_flags(resume: bool, overwrite: bool) -> str:
    """--resume / --overwrite as one mode; both at once is a usage error."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: --resume keeps OUTPUT's rows, "
                        "--overwrite deletes them; pass one")
    return "resume" if resume else "overwrite" if overwrite else "new"

# What --resume does with each LabelConfig field (tests/test_resume_options.py walks them all).
# Compared with OUTPUT's manifest (what makes rows comparable): another value is refused, exit 2, named.
# The own-model fields are compared through the model's identity.
RESUME_COMPARED = ("model", "weights", "top_k", "resize", "precision", "xla", "embeddings",
                   "classes", "preprocess", "input_size", "head", "multi_label", "threshold")
# How the run goes (cluster, sizes, retries, which images): the value given now is used. A SOURCE or
# --limit other than the recorded listing's is listed afresh.
RESUME_APPLIES = ("source", "output", "mode", "batch_size", "batches_per_task", "concurrency", "num_gpus",
                  "cpus_per_decode", "cpus_per_actor", "address", "limit", "rows_per_file", "seconds_per_file",
                  "storage_options", "read_retries", "verbose", "progress", "max_error_rate", "retry_errors",
                  "force_unlock", "lease_seconds", "dry_run", "relist")


@dataclass
class LabelConfig:
    """One labeling run: one field per option of ``pipeline label`` (``mode`` stands for --resume/--overwrite),
    with its defaults, so the CLI, ``pipeline.label()``, jobs/ and ``pipeline submit`` cannot drift apart.
    Checked on construction (``validate``): a bad value is a UserError naming the option."""

    # What to label, and where the rows go.
    source: str  # folder, glob, list file or inventory; local or fsspec URL
    output: str  # folder or bucket prefix for the Parquet parts
    mode: str = "new"  # new | resume | overwrite
    limit: int | None = None  # label only the first N listed images
    retry_errors: bool = False  # with resume: label again the paths whose rows hold an error
    relist: bool = False  # with resume: list SOURCE again instead of reusing the listing recorded in OUTPUT
    dry_run: bool = False  # list SOURCE, compare with OUTPUT, print the counts; label nothing, start no Ray
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options

    # The model, and what each row holds.
    model: str = DEFAULT_MODEL  # registry name or fine-tuned artifact location
    weights: str = "imagenet"  # imagenet | none | weights file path/URL
    top_k: int = 5  # classes kept per image
    resize: str | None = None  # squash (whole image) | center-crop (shorter side fits, centre kept); None: the model's
    precision: str = "float32"  # float32 | mixed (mixed_float16: float16 compute on GPUs)
    xla: bool = False  # compile the forward pass with XLA
    embeddings: bool = False  # add the 'embedding' column: each image's pooled penultimate features (float16)
    # How to read a model file the user trained (--model PATH.keras/.h5/SavedModel); see ModelSettings.
    classes: tuple[str, ...] | None = None  # output index -> name; None: class_0..class_{n-1}
    preprocess: str | None = None  # rescale|caffe|tf|torch|none|<registry name>
    input_size: int | None = None  # only when the model's input shape leaves the size open
    head: str = ModelSettings.head  # auto|softmax|sigmoid|logits
    multi_label: bool = ModelSettings.multi_label  # write every class at or above ``threshold``
    threshold: float = ModelSettings.threshold  # multi-label cut-off

    # The cluster, and how the work is cut up.
    address: str | None = None  # Ray cluster to join; None starts a local one
    batch_size: int = 32  # images per forward pass
    # Forward passes per Ray task: fewer, larger tasks cut Ray Data's per-task work (on 2 cores, 8 ran 116-117
    # img/s steady at 6,000 images against 112 for 4, with the same total time at 1,500).
    batches_per_task: int = 8
    concurrency: tuple[int, int] | None = None  # predictor actors: (min, max); None: as many as fit (auto)
    num_gpus: float = 0.0  # GPUs per predictor actor (fractions share a GPU)
    cpus_per_decode: float = 0.25  # CPUs reserved by each decode task (1.7 ms an image; waits on storage)
    cpus_per_actor: float = 0.75  # CPUs reserved by each predictor actor; CPU actors run TF on that many threads

    # How the run behaves: commits, retries, failures, the lease on OUTPUT, the console.
    rows_per_file: int = 10_000  # rows per committed part file
    seconds_per_file: float = 30.0  # also commit at least this often
    read_retries: int = DEFAULT_RETRIES  # rounds of re-reading objects after a transient error (0.5 s, 1 s, 2 s, ... apart)
    max_error_rate: float | None = None  # stop early when more than this share of rows fail; None: never
    force_unlock: bool = False  # take OUTPUT's lease even if its holder's heartbeat has not expired
    lease_seconds: float = 60.0  # a lease without a heartbeat for this long is expired
    verbose: bool = False  # show Ray Data's logs and the workers' output, not just our progress line
    progress: bool = True  # print the progress line while labeling

    def __post_init__(self) -> None:
        self.validate()

    @property
    def task_size(self) -> int:
        """Images per Ray task, in each stage: the input blocks hold exactly this many paths."""
        return self.batch_size * self.batches_per_task

    @property
    def model_settings(self) -> ModelSettings:
        return ModelSettings(self.classes, self.preprocess, self.input_size, self.head, self.multi_label,
                             self.threshold)

    def validate(self) -> None:
        """UserError naming the first setting out of range; the CLI, jobs/ and submit all get these checks."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UserError(message)

        need(bool(self.source), "SOURCE is empty; pass a folder, a glob or a list file")
        need(bool(self.output), "OUTPUT is empty; pass a folder or bucket prefix")
        need(self.mode in MODES, f"mode '{self.mode}' is not one of {', '.join(MODES)}")
        need(isinstance(self.top_k, int) and self.top_k >= 1, f"--top-k {self.top_k} should be at least 1")
        need(self.batch_size >= 1, f"--batch-size {self.batch_size} should be at least 1")
        need(self.batches_per_task >= 1, f"--batches-per-task {self.batches_per_task} should be at least 1")
        if self.concurrency is not None:  # None: auto
            low, high = self.concurrency
            need(1 <= low <= high, f"--concurrency {low},{high} should be auto, N or MIN,MAX with 1 <= MIN <= MAX")
        need(self.num_gpus >= 0, f"--num-gpus {self.num_gpus} should be 0 or more")
        need(self.cpus_per_decode > 0 and self.cpus_per_actor > 0,
             "--cpus-per-decode and --cpus-per-actor should be more than 0")
        need(self.limit is None or self.limit >= 1, f"--limit {self.limit} should be at least 1")
        need(self.rows_per_file >= 1, f"--rows-per-file {self.rows_per_file} should be at least 1")
        need(self.seconds_per_file > 0, f"seconds per file {self.seconds_per_file} should be more than 0")
        need(self.precision in PRECISIONS, f"--precision '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        need(self.resize is None or self.resize in RESIZE_MODES, f"--resize '{self.resize}' is not one of {', '.join(RESIZE_MODES)}")
        need(0.0 <= self.threshold <= 1.0, f"--threshold {self.threshold} should be between 0 and 1")
        need(self.read_retries >= 0, f"--read-retries {self.read_retries} should be 0 or more")
        need(self.max_error_rate is None or 0 < self.max_error_rate <= 1,
             f"--max-error-rate {self.max_error_rate} should be a share between 0 (exclusive) and 1, e.g. 0.5")
        need(not self.retry_errors or self.mode == "resume",
             "--retry-errors re-labels the error rows of a previous run; pass it with --resume")
        need(not self.relist or self.mode == "resume",
             "--relist lists SOURCE again for a --resume (a new run always lists it); pass it with --resume")
        need(math.isfinite(self.lease_seconds) and self.lease_seconds >= 1,
             f"lease seconds {self.lease_seconds} should be at least 1")
        need(isinstance(self.storage_options, dict), "--storage-options should be a JSON object")
        try:
            json.dumps(self.storage_options)
        except (TypeError, ValueError) as err:
            raise UserError(f"--storage-options cannot be passed to Ray workers as JSON ({err})") from None


@dataclass
class LabelSummary:
    listed: int  # images found in SOURCE (after --limit)
    skipped: int  # already in OUTPUT (resume)
    labeled: int  # rows written by this run
    errors: int  # rows written with an error
    ignored: int  # non-image files in SOURCE
    seconds: float
    retried: int = 0  # error rows removed for --retry-errors (their paths labeled again)
    transient: int = 0  # images whose reads still failed after retries: not stored, left for --resume
    startup_seconds: float = 0.0  # from the start to the first result (Ray, TensorFlow, model load)
    steady_images_per_second: float = 0.0  # rate after the first result arrived
    first_transient: str = ""  # "path: error" of the first image held back, for the message
    dry_run: bool = False  # nothing was labeled: the counts a run would start from
    left: int = 0  # dry run: images a run would label
    removed: int = 0  # dry run: images in OUTPUT that SOURCE no longer lists

    @property
    def images_per_second(self) -> float:
        return self.labeled / self.seconds if self.seconds > 0 else 0.0

    def line(self, output: str) -> str:
        """One summary line. The overall images/s of a short job is mostly start-up (29 photos: 1.7 images/s,
        16 s of it before the first result), so without a steady rate the line gives the start-up seconds and
        says there were too few images for a rate rather than print a number that reads as throughput."""
        if self.dry_run:
            gone = f", {self.removed:,} in OUTPUT no longer listed" if self.removed else ""
            return (f"dry run: {plural(self.listed, 'image')} listed ({plural(self.ignored, 'other file')} "
                    f"ignored), {self.skipped:,} already done, {self.left:,} left to label{gone}; nothing labeled "
                    f"({self.seconds:.1f} s) -> {output}")
        line = (f"labeled {plural(self.labeled, 'image')} ({plural(self.errors, 'error')}, "
                f"{plural(self.ignored, 'ignored file')}, {self.skipped:,} already done) in {self.seconds:.1f} s: ")
        if self.labeled and self.steady_images_per_second:
            line += (f"{self.images_per_second:.1f} images/s ({self.startup_seconds:.1f} s to the first result, "
                     f"steady {self.steady_images_per_second:.1f} images/s)")
        elif self.labeled:  # the results came back together: nothing steady to measure
            line += (f"{self.startup_seconds:.1f} s to the first result (starting Ray, TensorFlow and the model), "
                     "too few images for a steady rate")
        elif self.transient:  # every image left to label was held back: "nothing new" would be false
            line += "no rows written"
        else:
            line += "nothing new to label"
        if self.transient:
            line += f"; {plural(self.transient, 'image')} not read (transient storage errors), left for --resume"
        return f"{line} -> {output}"
