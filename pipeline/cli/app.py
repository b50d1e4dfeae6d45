"""The root Typer app and the one place that turns library errors into exit codes."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import typer

from pipeline.errors import JobFailedError, UserError

app = typer.Typer(
    name="pipeline",
    help="Label images with Keras classifiers on Ray, fine-tune them, and query the Parquet results.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print UserError/JobFailedError as one line on stderr and exit 2/1."""
    try:
        yield
    except (UserError, JobFailedError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)
