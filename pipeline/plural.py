"""Counts as people write them: "1 error", "2 errors", "12,000 images"."""

from __future__ import annotations


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``count`` with thousands separators and the noun in the form the count takes (``singular`` + "s"
    unless ``plural_form`` is given)."""
    return f"{count:,} {singular if count == 1 else plural_form or singular + 's'}"
