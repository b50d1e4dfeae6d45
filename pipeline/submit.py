"""Run the labeling and fine-tuning jobs on a remote Ray cluster through Ray's Job Submission API.

One place that knows how to reach a job server (address, auth token), what a job's entrypoint and
runtime environment are, and how to turn the server's answers into errors a user can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from pipeline.errors import JobFailedError, UserError

# Job name -> script that runs it on the cluster (same parser as the local command).
JOB_SCRIPTS = {"label": "jobs/label.py", "finetune": "jobs/finetune.py"}

# Never shipped in the working_dir upload (Ray also honours .gitignore; these hold even without it).
WORKING_DIR_EXCLUDES = [
    ".git", ".venv", "venv", "**/__pycache__", "*.egg-info", ".pytest_cache", "build", "dist",
    "out", "demo-output", "*.parquet",
]

TERMINAL_STATUSES = {"SUCCEEDED", "FAILED", "STOPPED"}

# Ray's own token sources, highest precedence first (docs.ray.io/en/latest/ray-security/token-auth.html).
TOKEN_HELP = (
    "put the cluster's token in ~/.ray/auth_token, or set RAY_AUTH_TOKEN=<token> or "
    "RAY_AUTH_TOKEN_PATH=<file>; on the head node 'ray get-auth-token' prints it, on KubeRay it is "
    "the RAY_AUTH_TOKEN of the head pod's Secret"
)


@dataclass(frozen=True)
class AuthToken:
    value: str  # the bearer token itself
    source: str  # where it came from, for messages ("RAY_AUTH_TOKEN", a file path)


def find_auth_token(environ: dict[str, str] | None = None) -> AuthToken | None:
    """The token Ray itself would use: RAY_AUTH_TOKEN, else RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token."""
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return AuthToken(environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN")
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as err:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read ({err.strerror})") from err
        if not token:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path} is empty")
        return AuthToken(token, str(path))
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file() and default.read_text().strip():
        return AuthToken(default.read_text().strip(), str(default))
    return None


def normalize_address(address: str) -> str:
    """'HEAD:8265' -> 'http://HEAD:8265'; the Job API speaks HTTP to the dashboard port."""
    address = address.strip().rstrip("/")
    if not address:
        raise UserError("--address is empty; give the dashboard URL of the head, e.g. http://HEAD:8265")
    if "://" not in address:
        address = "http://" + address
    if not address.startswith(("http://", "https://")):
        raise UserError(f"--address '{address}' should be the head's dashboard URL, e.g. http://HEAD:8265 "
                        "(the Job API is served there, not on the ray:// client port)")
    return address


def _unreachable(address: str, err: Exception) -> UserError:
    return UserError(f"cannot reach the Ray job server at {address} ({type(err).__name__}); check that the "
                     "head is running and its dashboard port (default 8265) is reachable from here, e.g. "
                     "through 'ray dashboard cluster.yaml' or 'kubectl port-forward svc/HEAD-SVC 8265'")


def authentication_mode(address: str, timeout: float = 10.0) -> str:
    """Ask the server (a public endpoint) whether it wants a token: 'token' or 'disabled'."""
    import requests

    try:
        response = requests.get(f"{address}/api/authentication_mode", timeout=timeout)
    except requests.RequestException as err:
        raise _unreachable(address, err) from None
    if response.status_code == 404:
        return "disabled"  # a Ray older than token auth
    try:
        return str(response.json()["authentication_mode"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{address} answered HTTP {response.status_code} but is not a Ray dashboard; "
                        "--address should be the head's dashboard URL, e.g. http://HEAD:8265") from None


def quiet_ray_client_logs() -> None:
    """The SDK logs every packaging step at INFO and warns that .git/.venv are excluded (we exclude them)."""
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.dashboard.modules.dashboard_sdk").setLevel(logging.WARNING)  # sets INFO itself
    logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)


# Ray's own INFO log lines in a job's log ("2026-12-07 03:24:24,123\tINFO job_manager.py:531 -- Runtime env is
# setting up."): the job server's, not the job's; its warnings and errors are kept.
RAY_INFO_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+INFO \S+\.py:\d+ -- ")


def without_ray_info_lines(text: str) -> str:
    """``text`` (a chunk of a job's log) without Ray's own INFO lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not RAY_INFO_LINE.match(line))


class Cluster:
    """A connected job server. Every method raises UserError with a one-line message on failure."""

    def __init__(self, address: str):
        from ray.job_submission import JobSubmissionClient

        quiet_ray_client_logs()
        self.address = normalize_address(address)
        headers = {}
        self.token: AuthToken | None = None
        if authentication_mode(self.address) == "token":
            self.token = find_auth_token()
            if self.token is None:
                raise UserError(f"the Ray cluster at {self.address} requires an auth token and none was found; "
                                + TOKEN_HELP)
            # Our own header: Ray's client only adds one when this process runs with RAY_AUTH_MODE=token.
            headers["Authorization"] = f"Bearer {self.token.value}"
        self.headers = headers
        with self.errors():
            self.client = JobSubmissionClient(self.address, headers=headers)

    def node_hostnames(self, wait_seconds: float = 15.0) -> set[str]:
        """Hostnames of the cluster's live nodes (the dashboard's node summary); empty when it has none yet.

        A dashboard that has just started fills its summary within seconds, so an empty one is asked again.
        """
        import requests

        deadline = time.monotonic() + wait_seconds
        while True:
            with self.errors():
                response = requests.get(f"{self.address}/nodes?view=summary", headers=self.headers, timeout=30)
                response.raise_for_status()
                nodes = response.json()["data"]["summary"]
            hosts = {node["hostname"] for node in nodes
                     if node.get("hostname") and node.get("raylet", {}).get("state", "ALIVE") == "ALIVE"}
            if hosts or time.monotonic() > deadline:
                return hosts
            time.sleep(1.0)

    @contextlib.contextmanager
    def errors(self, job_id: str | None = None) -> Iterator[None]:
        """Turn the SDK's exceptions (RuntimeError with an HTTP body, ConnectionError, ...) into UserError."""
        import requests
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError:
            source = f" (token from {self.token.source})" if self.token else ""
            raise UserError(f"the Ray cluster at {self.address} rejected the auth token{source}; "
                            + TOKEN_HELP) from None
        except (requests.RequestException, ConnectionError, OSError) as err:
            raise _unreachable(self.address, err) from None
        except RuntimeError as err:
            text = str(err)
            if job_id is not None and ("404" in text or "does not exist" in text):
                raise UserError(f"no job '{job_id}' on {self.address}; "
                                f"see 'pipeline jobs list --address {self.address}'") from None
            raise UserError(f"the Ray job server at {self.address} refused: {text.strip()}") from None

    def submit(self, entrypoint: str, runtime_env: dict, submission_id: str | None = None) -> str:
        with self.errors():
            return self.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                          submission_id=submission_id)

    def status(self, job_id: str) -> str:
        return self.info(job_id).status.value

    def info(self, job_id: str):
        with self.errors(job_id):
            return self.client.get_job_info(job_id)

    def jobs(self) -> list:
        with self.errors():
            return sorted(self.client.list_jobs(), key=lambda job: job.start_time or 0)

    def logs(self, job_id: str) -> str:
        with self.errors(job_id):
            return self.client.get_job_logs(job_id)

    def follow_logs(self, job_id: str, echo: Callable[[str], None]) -> None:
        """Stream the job's logs until it ends."""

        async def tail() -> None:
            async for lines in self.client.tail_job_logs(job_id):
                kept = without_ray_info_lines(lines)
                if kept:
                    echo(kept)

        self.info(job_id)  # unknown id: a clear error instead of a websocket failure
        with self.errors(job_id):
            asyncio.run(tail())

    def stop(self, job_id: str, wait_seconds: float = 60.0) -> str:
        """Ask the job to stop; wait until it is no longer running and return its final status."""
        with self.errors(job_id):
            self.client.stop_job(job_id)
        return self.wait(job_id, wait_seconds)

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 1.0) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if status in TERMINAL_STATUSES or (deadline is not None and time.monotonic() > deadline):
                return status
            time.sleep(poll)


def job_command(job: str):
    """The click command behind ``pipeline <job>``: the very parser jobs/<job>.py runs."""
    import typer

    from pipeline.cli import app

    group = typer.main.get_command(app)
    command = group.commands.get(job) if hasattr(group, "commands") else None
    if command is None:
        raise UserError(f"'pipeline {job}' is not available in this installation")
    return command


def validate_job_args(job: str, args: Sequence[str]) -> dict:
    """Parse ARGS with the job's real parser (without running it): a typo fails here, not on the cluster.

    Returns the parsed parameters (name -> value).
    """
    import typer

    command = job_command(job)
    try:
        with command.make_context(f"pipeline submit {job}", list(args), resilient_parsing=False) as ctx:
            return dict(ctx.params)
    except typer.Exit:
        raise UserError(f"'--help' is not passed to the job; see 'pipeline {job} --help'") from None
    except typer.TyperException as err:  # typer's click: NoSuchOption, MissingParameter, BadParameter, ...
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        raise UserError(f"{message} (arguments of 'pipeline {job}'; see 'pipeline {job} --help')") from None


def check_job_locally(job: str, params: dict) -> None:
    """Every check the job makes before it needs the cluster's storage, made here before anything is uploaded
    (UserError, exit 2): the settings the job's config checks, and a model or weights named on this machine
    (an unknown registry name, a model file we cannot read, a weights file that is not there). Models and
    data behind URLs are left to the job, which reads them with the cluster's credentials."""
    from pipeline import storage
    from pipeline.models.loading import model_kind
    from pipeline.models.shipping import KEYWORDS

    if job == "label":
        from pipeline.cli.label import label_config

        config = label_config(**params)  # a LabelConfig checks its values on construction
        if not storage.is_url(config.model):
            model_kind(config.model)  # "unknown model 'resnet5'; did you mean resnet50?"
        if config.weights not in KEYWORDS and not storage.is_url(config.weights) and not os.path.exists(config.weights):
            raise UserError(f"--weights '{config.weights}' does not exist here; pass an existing .keras/.h5/"
                            ".weights.h5 file or URL, 'imagenet' or 'none'")
    elif job == "finetune":
        from pipeline.cli.finetune import finetune_config

        finetune_config(**params)  # checks itself: base model, epochs, rates, ...


# Parameters of each job that name data or a model: (parameter, how the user wrote it).
PATH_PARAMETERS = {
    "label": (("source", "SOURCE"), ("output", "OUTPUT"), ("model", "--model"), ("weights", "--weights")),
    "finetune": (("data", "DATA"), ("output", "OUTPUT"), ("val", "--val")),
}


def local_paths(job: str, params: dict) -> list[tuple[str, str]]:
    """(parameter, value) of every argument that is a path on this machine rather than a URL or a name."""
    from pipeline import storage
    from pipeline.models.registry import REGISTRY
    from pipeline.models.shipping import KEYWORDS

    found = []
    for name, shown in PATH_PARAMETERS.get(job, ()):
        value = params.get(name)
        if not value or storage.is_url(str(value)) or value in KEYWORDS:
            continue
        if name == "model" and str(value).lower().replace("-", "_") in REGISTRY:
            continue
        found.append((shown, str(value)))
    return found


def refuse_local_paths(job: str, params: dict, cluster_hosts: set[str], address: str,
                       here: str | None = None) -> None:
    """A local path is only readable on the cluster when every node runs on this very machine."""
    here = here or socket.gethostname()
    if cluster_hosts <= {here}:  # every node is this machine (or the head reports none: we cannot tell)
        return
    paths = local_paths(job, params)
    if paths:
        shown, value = paths[0]
        raise UserError(
            f"{shown} '{value}' is a path on this machine, but the job runs on the cluster at {address}, whose "
            f"nodes ({', '.join(sorted(cluster_hosts)[:3])}) cannot read it; put it in object storage "
            "(s3://, gs://) and pass the URL, or, if it is on a filesystem mounted at the same path on every "
            "node (NFS, EFS), pass --shared-fs")


def project_root() -> Path:
    """The source tree shipped as the job's working_dir: the folder holding pipeline/ and jobs/."""
    import pipeline

    root = Path(pipeline.__file__).resolve().parent.parent
    if not (root / "jobs").is_dir():
        raise UserError(f"no jobs/ folder next to the installed package ({root}); submit from a source "
                        "checkout (pip install -e .) or pass --working-dir")
    return root


def job_entrypoint(job: str, args: Sequence[str]) -> str:
    """``python jobs/<job>.py ARGS`` as one shell-quoted command line."""
    return shlex.join(["python", JOB_SCRIPTS[job], *args])


def with_cluster_address(job: str, args: Sequence[str]) -> list[str]:
    """Make the job join the cluster it runs on (RAY_ADDRESS, set by Ray) instead of starting its own Ray."""
    args = list(args)
    takes_address = any("--address" in getattr(p, "opts", ()) for p in job_command(job).params)
    if takes_address and not any(a == "--address" or a.startswith("--address=") for a in args):
        args += ["--address", "auto"]
    return args


def build_runtime_env(working_dir: Path, extra: dict | None = None,
                      env_vars: dict[str, str] | None = None) -> dict:
    """working_dir = the project (code only; dependencies are installed on the nodes), plus user additions."""
    runtime_env: dict = {"working_dir": str(working_dir), "excludes": list(WORKING_DIR_EXCLUDES)}
    if extra:
        extra = dict(extra)
        runtime_env["excludes"] += extra.pop("excludes", [])
        runtime_env.update(extra)
    if env_vars:
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env_vars}
    return runtime_env


def forwarded_env(names_or_pairs: Sequence[str]) -> dict[str, str]:
    """``--env NAME`` copies NAME from this shell; ``--env NAME=VALUE`` sets it."""
    result = {}
    for item in names_or_pairs:
        name, sep, value = item.partition("=")
        if not sep:
            if name not in os.environ:
                raise UserError(f"--env {name}: no such variable in this shell; use --env {name}=VALUE")
            value = os.environ[name]
        result[name] = value
    return result


def submit(job: str, args: Sequence[str], address: str, *, working_dir: str | None = None,
           runtime_env: dict | None = None, env: Sequence[str] = (),
           submission_id: str | None = None, shared_fs: bool = False) -> tuple[Cluster, str]:
    """Validate ARGS locally, connect, upload the project and start ``python jobs/<job>.py ARGS``.

    Local paths in ARGS are refused when a node of the cluster runs on another machine, unless
    ``shared_fs`` says they are on a filesystem every node mounts at the same path.
    """
    if job not in JOB_SCRIPTS:
        raise UserError(f"unknown job '{job}'; choose one of {', '.join(JOB_SCRIPTS)}")
    args = with_cluster_address(job, args)
    params = validate_job_args(job, args)
    check_job_locally(job, params)
    root = Path(working_dir).resolve() if working_dir else project_root()
    if not (root / JOB_SCRIPTS[job]).is_file():
        raise UserError(f"{root / JOB_SCRIPTS[job]} does not exist; --working-dir must be the project root")
    cluster = Cluster(address)
    if not shared_fs and local_paths(job, params):
        refuse_local_paths(job, params, cluster.node_hostnames(), cluster.address)
    job_id = cluster.submit(job_entrypoint(job, args), build_runtime_env(root, runtime_env, forwarded_env(env)),
                            submission_id)
    return cluster, job_id


def raise_for_status(job_id: str, status: str, message: str | None = None) -> None:
    """Exit code contract for --wait: SUCCEEDED is fine, anything else is a failed job."""
    if status != "SUCCEEDED":
        detail = f": {first_line(message)}" if message and message.strip() else ""
        raise JobFailedError(f"job {job_id} ended {status}{detail}")


def first_line(message: str) -> str:
    """Ray appends the job's last 20,000 characters of logs to a failure message; keep the headline."""
    return message.strip().splitlines()[0].split(", last available logs")[0].rstrip(":,")
