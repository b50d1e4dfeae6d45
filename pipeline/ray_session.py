"""Join a Ray cluster, or start an embedded local one, for the length of a job."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from pipeline.errors import UserError

# TensorFlow's C++ start-up chatter would bury the job's own output. Set as a default, never forced: a
# value from the user, the job's runtime env or the pod spec wins.
QUIET_TENSORFLOW = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def quiet_tensorflow() -> None:
    """Quiet TensorFlow in this process; call in a worker (actor ``__init__``) before importing it.

    Why here and not in ``ray.init(runtime_env=...)``: inside a submitted Ray job, Ray refuses to merge
    a ``ray.init`` runtime env with the job's own when both set the same env var (every KubeRay RayJob
    that sets TF_CPP_MIN_LOG_LEVEL did), so the worker environment must never come from ``ray.init``.
    """
    for name, value in QUIET_TENSORFLOW.items():
        os.environ.setdefault(name, value)


def quiet_ray_data(verbose: bool) -> None:
    """Ray Data's per-operator progress bars and execution logs in this process, only with --verbose."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
    logging.getLogger("ray.data").setLevel(logging.INFO if verbose else logging.ERROR)


@contextlib.contextmanager
def ray_session(address: str | None, verbose: bool = False) -> Iterator[None]:
    """Connect to ``address``; disconnect at the end.

    Unless ``verbose``, the console shows the job's own lines: workers' output (TensorFlow's start-up
    chatter) and Ray's Python warnings stay in Ray's log files. (Ray's C++ core still prints its own
    error-level lines; silencing those would also empty them from the log files.)

    With no address: inside a Ray job (``RAY_ADDRESS`` set by the job server) join that cluster,
    else start a fresh local Ray -- ``"local"``, never attaching to a cluster that a ``ray start``
    elsewhere on this machine left behind. An existing connection is reused as is.

    No ``runtime_env`` is passed, so a job's own runtime env (KubeRay ``runtimeEnvYAML``, ``pipeline
    submit --runtime-env/--env``) is used unchanged. ``verbose=False`` keeps the workers' stdout and
    stderr (TensorFlow's log lines) off this console; a task's error still reaches us as an exception.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        quiet_tensorflow()  # a local Ray's workers inherit this process's environment
    try:
        ray.init(address=address, include_dashboard=False,
                 logging_level=logging.WARNING if verbose else logging.ERROR, log_to_driver=verbose)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise UserError(f"cannot reach the Ray cluster at '{address}': {err}; check --address "
                        "(e.g. 'ray://HEAD:10001' or 'HEAD:6379' from inside the cluster)") from err
    try:
        yield
    finally:
        ray.shutdown()
