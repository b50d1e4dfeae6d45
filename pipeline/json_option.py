"""The one parser of options that take a JSON object (``--storage-options``, ``--runtime-env``)."""

from __future__ import annotations

import json
from typing import Any

from pipeline.errors import UserError

STORAGE_OPTIONS_EXAMPLE = '{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}'


def parse_json_object(text: str | dict | None, option: str,
                      example: str = STORAGE_OPTIONS_EXAMPLE) -> dict[str, Any] | None:
    """The JSON object given to ``option`` (None when absent; a dict is taken as it is); UserError naming the
    option, what is wrong and an ``example`` otherwise."""
    if isinstance(text, dict):
        return text
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{option} is not valid JSON ({err}); example: '{example}'") from None
    if not isinstance(value, dict):
        raise UserError(f"{option} must be a JSON object, not {type(value).__name__}; example: '{example}'")
    return value
