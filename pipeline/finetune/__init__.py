"""The fine-tuning job: a registry base + new head trained data-parallel with Ray Train, exported for labeling.

The names below load on first use: a Ray Train worker imports ``pipeline.finetune.worker`` without the
driver's side (Ray Data decoding, the export, the report). Calling the package runs a job with the
command's keywords: ``pipeline.finetune(DATA, OUTPUT, epochs=5)`` (``pipeline.api.finetune``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.lazy_names import callable_package, lazy_getattr

if TYPE_CHECKING:
    from pipeline.finetune.job import FinetuneConfig, FinetuneSummary, run_finetune

__all__ = ["FinetuneConfig", "FinetuneSummary", "run_finetune"]

_HOMES = {"FinetuneConfig": "pipeline.finetune.job", "FinetuneSummary": "pipeline.finetune.job",
          "run_finetune": "pipeline.finetune.job"}

__getattr__ = lazy_getattr(__name__, _HOMES)
callable_package(__name__, "pipeline.api:finetune")  # pipeline.finetune(...) is pipeline.api.finetune(...)
