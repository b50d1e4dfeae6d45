"""The distributed labeling job: listing, decode stage, predictor actors, exactly-once Parquet output."""

from pipeline.label.config import LabelConfig, LabelSummary
from pipeline.label.job import run_label_job

__all__ = ["LabelConfig", "LabelSummary", "run_label_job"]
