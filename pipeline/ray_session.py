"""Join a Ray cluster, or start an embedded local one, for the length of a job."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Iterator

from pipeline.console_noise import without_known_noise
from pipeline.errors import UserError

# Idle worker processes a local Ray keeps, per CPU. Ray's default keeps about as many as there are
# unreserved CPUs, and a labeling job reserves them all: predictor actors (0.75 CPU each) and decode tasks
# (0.25 each). Each decode worker was then killed a second after its task and a fresh one started for the
# next task, paying Python's, Ray's and OpenCV's start-up every time: 0.4 of 2 cores in steady state (44 ->
# 38 images/s for MobileNetV2). An idle worker costs only its memory (~130 MiB), and only while the job
# that needed it runs.
WORKERS_PER_CPU = 8


def local_ray_system_config() -> dict[str, int]:
    """The local Ray's worker pool: room for every process a job runs at once (RAY_num_workers_soft_limit wins)."""
    if "RAY_num_workers_soft_limit" in os.environ:
        return {}
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"num_workers_soft_limit": WORKERS_PER_CPU * cpus}


def start_local_ray(**init_options) -> None:
    """``ray.init`` a fresh local Ray (no dashboard) whose workers never ask another cluster's state API.

    Ray's workers find "the" cluster's state API through ``RAY_API_SERVER_ADDRESS``, else through the last
    cluster a ``ray start`` on this machine recorded. Ray Train's ``PlacementGroupCleaner`` asks that API
    every second whether the run's controller is alive; told "no such actor" by another cluster's dashboard,
    it removed the training workers' placement group, so with any ``ray start`` cluster on the same machine
    every local fine-tuning run died a second into training ("Destroying worker since its placement group
    was removed"). Here the raylet, and so every worker (they inherit its environment), starts with
    ``RAY_API_SERVER_ADDRESS`` naming the port reserved for this Ray's own API server. With no dashboard
    nothing answers there: the cleaner's question fails, which it takes as "ask again later", and a local
    Ray's placement groups end with it. The variable is put back in this process once Ray has started.
    """
    import ray

    port = _free_local_port()
    saved = os.environ.get(API_SERVER_VARIABLE)
    os.environ[API_SERVER_VARIABLE] = f"http://127.0.0.1:{port}"
    try:
        ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1", dashboard_port=port,
                 _system_config=local_ray_system_config(), **init_options)
    finally:
        if saved is None:
            os.environ.pop(API_SERVER_VARIABLE, None)
        else:
            os.environ[API_SERVER_VARIABLE] = saved


API_SERVER_VARIABLE = "RAY_API_SERVER_ADDRESS"


def _free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def quiet_ray_data(verbose: bool) -> None:
    """Ray Data's per-operator progress bars and execution logs in this process, only with --verbose (for the
    length of the job's ``ray_session``)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
    logging.getLogger("ray.data").setLevel(logging.INFO if verbose else logging.ERROR)


@contextlib.contextmanager
def ray_session(address: str | None, verbose: bool = False) -> Iterator[None]:
    """Connect to ``address``; disconnect at the end.

    Unless ``verbose``, the console shows the job's own lines: workers' output (TensorFlow's start-up
    chatter) and Ray's Python warnings stay in Ray's log files. Ray's C++ core still prints its own
    error-level lines (silencing those would also empty them from the log files), all but the known,
    harmless ones of ``pipeline.console_noise``.

    With no address: inside a Ray job (``RAY_ADDRESS`` set by the job server) join that cluster,
    else start a fresh local Ray -- ``"local"``, never attaching to a cluster that a ``ray start``
    elsewhere on this machine left behind. An existing connection is reused as is.

    A local Ray keeps its idle workers (``local_ray_system_config``); a cluster's nodes get the same from
    ``RAY_num_workers_soft_limit`` in their pod spec (cluster/). No ``runtime_env`` is passed (see
    ``pipeline.tensorflow_env``), so a job's own runtime env (KubeRay ``runtimeEnvYAML``, ``pipeline
    submit --runtime-env/--env``) is used unchanged. ``verbose=False`` keeps the workers' stdout and
    stderr (TensorFlow's log lines) off this console; a task's error still reaches us as an exception.
    """
    import ray

    with job_data_context():
        if ray.is_initialized():
            yield
            return
        with _connected(address, verbose):
            yield


@contextlib.contextmanager
def job_data_context() -> Iterator[None]:
    """Ray Data settings a job changes in this process (progress bars, execution logs, the object-store cap of
    ``bound_decoded_backlog``) are put back when it ends: a notebook's own Datasets run as before."""
    from ray.data import DataContext

    context = DataContext.get_current()
    options = context.execution_options
    saved = (context.enable_progress_bars, context.print_on_execution_start, options.resource_limits,
             logging.getLogger("ray.data").level)
    try:
        yield
    finally:
        context = DataContext.get_current()
        (context.enable_progress_bars, context.print_on_execution_start, context.execution_options.resource_limits,
         level) = saved
        logging.getLogger("ray.data").setLevel(level)


@contextlib.contextmanager
def _connected(address: str | None, verbose: bool) -> Iterator[None]:
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or "local"
    console = {"logging_level": logging.WARNING if verbose else logging.ERROR, "log_to_driver": verbose}
    try:
        if address == "local":
            start_local_ray(**console)
        else:
            ray.init(address=address, include_dashboard=False, **console)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise UserError(f"cannot reach the Ray cluster at '{address}': {err}; check --address "
                        "(e.g. 'ray://HEAD:10001' or 'HEAD:6379' from inside the cluster)") from err
    try:
        with contextlib.nullcontext() if verbose else without_known_noise():
            yield
    finally:
        ray.shutdown()
