"""``pipeline submit label|finetune`` and ``pipeline jobs list|status|logs|stop``: the jobs on a remote Ray cluster."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Optional

import typer

from pipeline.cli.app import app, user_errors
from pipeline.cli.help_format import PlainHelpCommand, PlainHelpGroup

submit_app = typer.Typer(
    cls=PlainHelpGroup,
    help="Run a job on a Ray cluster through the Job Submission API (same arguments as the local command).",
    no_args_is_help=True,
)
jobs_app = typer.Typer(cls=PlainHelpGroup, help="List, inspect, follow and stop jobs on a Ray cluster.", no_args_is_help=True)
app.add_typer(submit_app, name="submit")
app.add_typer(jobs_app, name="jobs")

Address = Annotated[str, typer.Option(
    envvar="RAY_API_SERVER_ADDRESS",
    help="Dashboard URL of the cluster's head, e.g. http://HEAD:8265 (or RAY_API_SERVER_ADDRESS).")]
Wait = Annotated[bool, typer.Option("--wait", help="Stream the logs and exit with the job's status (0 ok, 1 failed or stopped).")]
WorkingDir = Annotated[Optional[str], typer.Option(help="Project folder to upload; default: this checkout.")]
RuntimeEnv = Annotated[Optional[str], typer.Option(
    help='Extra runtime_env as JSON, e.g. \'{"pip": ["s3fs==2024.6.1"]}\'; merged over the working_dir.')]
Env = Annotated[Optional[list[str]], typer.Option(
    "--env", help="NAME (copied from this shell) or NAME=VALUE, set for the job; repeatable.")]
SharedFs = Annotated[bool, typer.Option(
    "--shared-fs", help="Local paths in the arguments are on a filesystem every node mounts at the same path.")]
SubmissionId = Annotated[Optional[str], typer.Option(help="Your own job id (must be new on the cluster).")]

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _submit(job: str, ctx: typer.Context, address: str, wait: bool, working_dir: Optional[str],
            runtime_env: Optional[str], env: Optional[list[str]], submission_id: Optional[str],
            shared_fs: bool = False) -> None:
    from pipeline.json_option import parse_json_object
    from pipeline.submit import raise_for_status, submit

    with user_errors():
        extra_env = parse_json_object(runtime_env, "--runtime-env", '{"pip": ["s3fs==2024.6.1"]}')
        cluster, job_id = submit(job, ctx.args, address, working_dir=working_dir, runtime_env=extra_env,
                                 env=env or (), submission_id=submission_id, shared_fs=shared_fs)
        typer.echo(job_id)
        typer.echo(f"submitted {job} job {job_id} to {cluster.address}; follow it with "
                   f"'pipeline jobs logs {job_id} --follow --address {cluster.address}'", err=True)
        if not wait:
            return
        try:
            cluster.follow_logs(job_id, lambda text: typer.echo(text, nl=False))
        except KeyboardInterrupt:
            typer.echo(f"\nstopped following; the job keeps running. Stop it with "
                       f"'pipeline jobs stop {job_id} --address {cluster.address}'", err=True)
            raise typer.Exit(130) from None
        status = cluster.wait(job_id)
        typer.echo(f"job {job_id}: {status}", err=True)
        raise_for_status(job_id, status, cluster.info(job_id).message if status != "SUCCEEDED" else None)


@submit_app.command("label", context_settings=PASS_THROUGH, cls=PlainHelpCommand)
def submit_label(ctx: typer.Context, address: Address, wait: Wait = False, working_dir: WorkingDir = None,
                 runtime_env: RuntimeEnv = None, env: Env = None, submission_id: SubmissionId = None,
                 shared_fs: SharedFs = False) -> None:
    """Submit 'pipeline label SOURCE OUTPUT [OPTIONS]' to a cluster: every other argument goes to the job.

    SOURCE and OUTPUT are read on the cluster, so use object storage (s3://, gs://) or a shared
    filesystem (--shared-fs); local paths are refused when the cluster runs on other machines. The
    arguments are checked here with the same parser before anything is uploaded.
    """
    _submit("label", ctx, address, wait, working_dir, runtime_env, env, submission_id, shared_fs)


@submit_app.command("finetune", context_settings=PASS_THROUGH, cls=PlainHelpCommand)
def submit_finetune(ctx: typer.Context, address: Address, wait: Wait = False, working_dir: WorkingDir = None,
                    runtime_env: RuntimeEnv = None, env: Env = None, submission_id: SubmissionId = None,
                    shared_fs: SharedFs = False) -> None:
    """Submit 'pipeline finetune DATA OUTPUT [OPTIONS]' to a cluster: every other argument goes to the job.

    DATA and OUTPUT are read and written on the cluster, so use object storage or a shared filesystem
    (--shared-fs); local paths are refused when the cluster runs on other machines.
    """
    _submit("finetune", ctx, address, wait, working_dir, runtime_env, env, submission_id, shared_fs)


def _time(millis: Optional[int]) -> str:
    return datetime.fromtimestamp(millis / 1000).strftime("%Y-%m-%d %H:%M:%S") if millis else "-"


@jobs_app.command("list", cls=PlainHelpCommand)
def jobs_list(address: Address) -> None:
    """Every job the cluster knows, oldest first: id, status, start time, entrypoint."""
    from pipeline.submit import Cluster

    with user_errors():
        jobs = Cluster(address).jobs()
    if not jobs:
        typer.echo("no jobs")
    for job in jobs:
        job_id = job.submission_id or job.job_id
        typer.echo(f"{job_id:<30} {job.status.value:<10} {_time(job.start_time)}  {job.entrypoint}")


@jobs_app.command("status", cls=PlainHelpCommand)
def jobs_status(job_id: Annotated[str, typer.Argument(help="The id printed by 'pipeline submit'.")],
                address: Address) -> None:
    """Print a job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) and its message."""
    from pipeline.submit import Cluster, first_line

    with user_errors():
        info = Cluster(address).info(job_id)
    typer.echo(info.status.value)
    if info.message and info.message.strip():
        typer.echo(first_line(info.message), err=True)


@jobs_app.command("logs", cls=PlainHelpCommand)
def jobs_logs(job_id: Annotated[str, typer.Argument(help="The id printed by 'pipeline submit'.")],
              address: Address,
              follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming until the job ends.")] = False,
              ) -> None:
    """Print a job's logs (stdout and stderr of its driver)."""
    from pipeline.submit import Cluster

    with user_errors():
        cluster = Cluster(address)
        if follow:
            cluster.follow_logs(job_id, lambda text: typer.echo(text, nl=False))
        else:
            typer.echo(cluster.logs(job_id), nl=False)


@jobs_app.command("stop", cls=PlainHelpCommand)
def jobs_stop(job_id: Annotated[str, typer.Argument(help="The id printed by 'pipeline submit'.")],
              address: Address,
              timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for the job to end.")] = 60.0,
              ) -> None:
    """Stop a running job and wait until it has ended; prints its final status."""
    from pipeline.submit import Cluster

    with user_errors():
        status = Cluster(address).stop(job_id, wait_seconds=timeout)
    typer.echo(status)
    if status not in {"STOPPED", "SUCCEEDED", "FAILED"}:
        typer.echo(f"job {job_id} is still {status} after {timeout:g} s", err=True)
        raise typer.Exit(1)
