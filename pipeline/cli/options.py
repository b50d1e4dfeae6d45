"""Parsing of options shared by several commands."""

from __future__ import annotations

import json
from enum import Enum

from pipeline import storage
from pipeline.errors import UserError


class ResizeMode(str, Enum):
    """--resize of ``label`` and ``finetune`` (pipeline.images.RESIZE_MODES)."""

    squash = "squash"
    center_crop = "center-crop"


def parse_json_object(text: str | None, option: str, example: str) -> dict | None:
    """The JSON object given to ``option`` (None when absent); UserError with ``example`` otherwise."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{option} is not valid JSON ({err}); example: '{example}'") from None
    if not isinstance(value, dict):
        raise UserError(f"{option} must be a JSON object; example: '{example}'")
    return value


def apply_storage_options(text: str | None) -> None:
    """Parse ``--storage-options`` JSON and hand it to the storage layer."""
    options = parse_json_object(text, "--storage-options",
                                '{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}')
    if options is not None:
        storage.set_storage_options(options)
