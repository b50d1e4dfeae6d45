"""The fine-tuning job: a registry base + new head trained data-parallel with Ray Train, exported for labeling.

The names below load on first use: a Ray Train worker imports ``pipeline.finetune.worker`` without the
driver's side (Ray Data decoding, the export, the report).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.finetune.job import FinetuneConfig, FinetuneSummary, run_finetune

__all__ = ["FinetuneConfig", "FinetuneSummary", "run_finetune"]

_HOMES = {"FinetuneConfig": "pipeline.finetune.job", "FinetuneSummary": "pipeline.finetune.job",
          "run_finetune": "pipeline.finetune.job"}


def __getattr__(name: str) -> Any:
    import importlib

    if name not in _HOMES:
        raise AttributeError(f"module 'pipeline.finetune' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
