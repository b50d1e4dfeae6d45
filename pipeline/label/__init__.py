"""The distributed labeling job: listing, decode stage, predictor actors, exactly-once Parquet output.

The names below load on first use: the CLI reads its defaults from ``pipeline.label.config`` without
importing the job itself (pyarrow, pandas, Ray's pickling), which only ``pipeline label`` needs.
Calling the package runs a job with the command's keywords: ``pipeline.label(SOURCE, OUTPUT, top_k=3)``
(``pipeline.api.label``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.lazy_names import callable_package, lazy_getattr

if TYPE_CHECKING:
    from pipeline.label.config import LabelConfig, LabelSummary
    from pipeline.label.job import run_label_job

__all__ = ["LabelConfig", "LabelSummary", "run_label_job"]

_HOMES = {"LabelConfig": "pipeline.label.config", "LabelSummary": "pipeline.label.config",
          "run_label_job": "pipeline.label.job"}

__getattr__ = lazy_getattr(__name__, _HOMES)
callable_package(__name__, "pipeline.api:label")  # pipeline.label(...) is pipeline.api.label(...)
