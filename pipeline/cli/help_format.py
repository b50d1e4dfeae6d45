"""Help that names values the way click and argparse do: ``--top-k INTEGER``, ``--resize [squash|center-crop]``,
``Usage: pipeline label [OPTIONS] SOURCE OUTPUT``.

typer 0.29 prints each value's Python type instead (``<str>``, ``<int range>``, ``<bool>``) and wraps every
required argument in braces (``{SOURCE}``), and has no setting for either. ``PlainHelpCommand`` is the
command class of every ``pipeline`` command: when its help or usage is drawn, each option without a metavar
gets click's name for its value, and arguments are shown by name alone. Parsing is untouched.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

CLICK_NAMES = {"str": "TEXT", "int": "INTEGER", "int range": "INTEGER", "float": "FLOAT", "float range": "FLOAT",
               "list[str]": "TEXT"}


class _PlainArgument(TyperArgument):
    """An argument drawn as its name (``SOURCE``, ``FILE...``), without a type column or braces."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")


class _PlainFlag(TyperOption):
    """A flag (``--resume``, ``--help``) drawn without a value: it takes none."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


def value_name(type_label: str) -> str:
    """click's metavar for typer's ``<type>`` label: TEXT, INTEGER, FLOAT, or the choices as ``[a|b]``."""
    bare = type_label.strip("<>")
    if bare in CLICK_NAMES:
        return CLICK_NAMES[bare]
    return f"[{bare}]" if "|" in bare else bare.upper()


def name_values(params: list[Any], ctx: Any) -> None:
    """Draw ``params`` as click does (see the module docstring); idempotent."""
    for param in params:
        if isinstance(param, TyperArgument):
            param.__class__ = _PlainArgument
        elif getattr(param, "is_flag", False):
            param.__class__ = _PlainFlag
        elif param.metavar is None:
            param.metavar = value_name(param.display_type(ctx))


class PlainHelpCommand(TyperCommand):
    """A ``pipeline`` command whose help and usage name values as click does."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        name_values(self.get_params(ctx), ctx)
        super().format_help(ctx, formatter)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        name_values(self.get_params(ctx), ctx)
        return super().collect_usage_pieces(ctx)


class PlainHelpGroup(TyperGroup):
    """The ``pipeline`` command and its groups (``submit``, ``jobs``), drawn as PlainHelpCommand is."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        name_values(self.get_params(ctx), ctx)
        super().format_help(ctx, formatter)
