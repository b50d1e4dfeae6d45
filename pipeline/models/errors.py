"""The error every model-loading step raises, in its own module so loaders can share it without cycles."""

from __future__ import annotations

from pipeline.errors import UserError


class ModelLoadError(UserError):
    """A model or weights that cannot be loaded; the message tells the user what to do."""
