"""Package attributes that import their module on first use (PEP 562), so importing the package stays cheap."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Callable


def lazy_getattr(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that finds each name of ``homes`` in its home module; a name
    whose home is the subpackage of that name (``label``: ``pipeline.label``) is that subpackage."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(homes[name])
        return module if homes[name] == f"{package}.{name}" else getattr(module, name)

    return __getattr__


def callable_package(package: str, function: str) -> None:
    """Make ``package`` callable as ``function`` ("module:name"), imported on the first call.

    ``pipeline.label(...)`` runs a labeling job while ``pipeline.label.LabelConfig`` stays the subpackage's:
    a subpackage and a function cannot otherwise share a name, since importing ``pipeline.label`` sets
    that attribute of ``pipeline`` to the subpackage. Assigning a module's ``__class__`` is supported Python.
    """
    home, _, name = function.partition(":")

    class CallablePackage(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(importlib.import_module(home), name)(*args, **kwargs)

    CallablePackage.__call__.__doc__ = f"{package}(...) is {function.replace(':', '.')}(...)."
    sys.modules[package].__class__ = CallablePackage
