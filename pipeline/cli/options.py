"""Parsing of options shared by several commands."""

from __future__ import annotations

import json

from pipeline import storage
from pipeline.errors import UserError


def apply_storage_options(text: str | None) -> None:
    """Parse ``--storage-options`` JSON and hand it to the storage layer."""
    if not text:
        return
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--storage-options is not valid JSON ({err}); example: "
                        '\'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\'') from err
    if not isinstance(options, dict):
        raise UserError("--storage-options must be a JSON object")
    storage.set_storage_options(options)
