"""Parsing of options shared by several commands."""

from __future__ import annotations

from enum import Enum

from pipeline import storage
from pipeline.json_option import parse_json_object


class ResizeMode(str, Enum):
    """--resize of ``label`` and ``finetune`` (pipeline.images.RESIZE_MODES)."""

    squash = "squash"
    center_crop = "center-crop"


def apply_storage_options(text: str | None) -> None:
    """Parse ``--storage-options`` JSON and hand it to the storage layer."""
    options = parse_json_object(text, "--storage-options")
    if options is not None:
        storage.set_storage_options(options)
