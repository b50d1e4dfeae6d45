"""The root Typer app and the one place that turns library errors into exit codes."""

from __future__ import annotations

import contextlib
import shlex
import sys
from typing import Iterator

import typer

from pipeline.cli.help_format import PlainHelpGroup
from pipeline.errors import Interrupted, JobFailedError, UserError

app = typer.Typer(
    cls=PlainHelpGroup,
    name="pipeline",
    help="Label images with Keras classifiers on Ray, fine-tune them, and query the Parquet results.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def in_a_process_of_ours() -> None:
    # Every command runs in a process of its own (a shell's, a Ray job's): TensorFlow's defaults apply to it
    # and to the local Ray it may start, before anything imports TensorFlow.
    from pipeline.tensorflow_env import apply_tensorflow_defaults

    apply_tensorflow_defaults()


@contextlib.contextmanager
def user_errors(context: typer.Context | None = None) -> Iterator[None]:
    """Print UserError/JobFailedError as one line on stderr and exit 2/1; an Interrupted job's line ends with
    the command that finishes it when the command's ``context`` is given."""
    try:
        yield
    except Interrupted as err:
        finish = f"; to finish: {resume_command(context)}" if context is not None else ""
        typer.echo(f"{err}{finish}", err=True)
        raise typer.Exit(err.exit_code) from None
    except (UserError, JobFailedError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def resume_command(context: typer.Context) -> str:
    """The command being run, as a shell line, with --resume instead of --overwrite: what finishes the job.

    Rebuilt from the parsed parameters (every argument, every option that differs from its default), so it
    is the same whether the command came from a shell, ``python -m pipeline`` or a test's CliRunner."""
    import enum

    names, level = [], context
    while level.parent is not None:  # the subcommands' names, whatever the root was called as
        names.append(level.info_name)
        level = level.parent
    words = ["pipeline", *reversed(names)]
    for param in context.command.params:
        value = context.params.get(param.name)
        if param.param_type_name == "argument":
            words += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
            continue
        if param.name in ("resume", "overwrite") or value == param.default or value is None:
            continue
        if param.is_flag:
            flags = param.opts if value else param.secondary_opts
            words += flags[:1]
            continue
        for item in value if param.multiple else [value]:
            words += [param.opts[0], str(item.value if isinstance(item, enum.Enum) else item)]
    if any(param.name == "resume" for param in context.command.params):
        words.append("--resume")
    return shlex.join(words)


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)
