"""Check a submitted job's arguments here, with the job's own parser and its config checks, before upload.

``pipeline submit label ARGS`` runs ``python jobs/label.py ARGS`` on the cluster; parsing ARGS with
the very command that script runs (and, for labeling, ``LabelConfig.validate``) turns a typo or an
out-of-range value into exit 2 on the user's machine instead of a failed cluster job. It lives with
the CLI so the library's ``pipeline.submit`` never imports the command line.
"""

from __future__ import annotations

from typing import Sequence

import typer

from pipeline.errors import UserError


def job_command(job: str):
    """The click command behind ``pipeline <job>``: the very parser jobs/<job>.py runs."""
    from pipeline.cli import app

    group = typer.main.get_command(app)
    command = group.commands.get(job) if hasattr(group, "commands") else None
    if command is None:
        raise UserError(f"'pipeline {job}' is not available in this installation")
    return command


def with_cluster_address(job: str, args: Sequence[str]) -> list[str]:
    """Make the job join the cluster it runs on (RAY_ADDRESS, set by Ray) instead of starting its own Ray."""
    args = list(args)
    takes_address = any("--address" in getattr(p, "opts", ()) for p in job_command(job).params)
    if takes_address and not any(a == "--address" or a.startswith("--address=") for a in args):
        args += ["--address", "auto"]
    return args


def validate_job_args(job: str, args: Sequence[str]) -> None:
    """Parse ARGS with the job's real parser (without running it): a typo fails here, not on the cluster."""
    command = job_command(job)
    try:
        with command.make_context(f"pipeline submit {job}", list(args), resilient_parsing=False) as ctx:
            params = dict(ctx.params)
    except typer.Exit:
        raise UserError(f"'--help' is not passed to the job; see 'pipeline {job} --help'") from None
    except typer.TyperException as err:  # typer's click: NoSuchOption, MissingParameter, BadParameter, ...
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        raise UserError(f"{message} (arguments of 'pipeline {job}'; see 'pipeline {job} --help')") from None
    if job == "label":
        from pipeline.cli.label import label_config

        label_config(**params).validate()


def prepared_job_args(job: str, args: Sequence[str]) -> list[str]:
    """ARGS with the cluster's address added, checked as the job itself would check them."""
    args = with_cluster_address(job, args)
    validate_job_args(job, args)
    return args
