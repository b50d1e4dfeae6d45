"""Join a Ray cluster, or start an embedded local one, for the length of a job."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from pipeline.errors import UserError

# Worker processes inherit these: TensorFlow's start-up chatter would bury the job's own output.
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}


@contextlib.contextmanager
def ray_session(address: str | None, verbose: bool = False) -> Iterator[None]:
    """Connect to ``address``; disconnect at the end.

    Unless ``verbose``, the console shows the job's own lines only: workers' output (TensorFlow's
    start-up chatter), Ray's warnings and its C++ core's log lines stay in Ray's log files.

    With no address: inside a Ray job (``RAY_ADDRESS`` set by the job server) join that cluster,
    else start a fresh local Ray -- ``"local"``, never attaching to a cluster that a ``ray start``
    elsewhere on this machine left behind. An existing connection is reused as is.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    if not verbose:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                 logging_level=logging.WARNING if verbose else logging.ERROR,
                 log_to_driver=verbose, runtime_env={"env_vars": WORKER_ENV})
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise UserError(f"cannot reach the Ray cluster at '{address}': {err}; check --address "
                        "(e.g. 'ray://HEAD:10001' or 'HEAD:6379' from inside the cluster)") from err
    try:
        yield
    finally:
        ray.shutdown()
