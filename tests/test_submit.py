"""Submitting jobs to a real Ray head on loopback: `pipeline submit` and `pipeline jobs`, auth token included.

One head per module, started the way a user starts one (`ray start --head`), with token authentication on
and its own token file, temp dir and ports, so it neither needs nor disturbs other Ray clusters here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from ray_head import free_port, start_head
from s3_proxy import moto_s3
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.submit import Cluster, build_runtime_env

CAT_CLASSES = {"Egyptian cat", "tabby", "tiger cat"}
CONTRACT_COLUMNS = ["path", "label", "score", "top_labels", "top_scores", "top_ids", "model", "error"]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    started = time.monotonic()
    ray_head = start_head(tmp_path_factory.mktemp("ray-head"))
    print(f"ray head ready in {time.monotonic() - started:.1f} s at {ray_head.address}")
    yield ray_head
    ray_head.stop()


@pytest.fixture(scope="module")
def client_env(head) -> dict:
    """The client finds the head's token the way Ray documents: here through RAY_AUTH_TOKEN_PATH."""
    return {"RAY_AUTH_TOKEN_PATH": str(head.token_file), "RAY_AUTH_TOKEN": None, "RAY_API_SERVER_ADDRESS": None}


def pipeline(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture(scope="module")
def cat_and_coffee(tmp_path_factory, photos) -> Path:
    folder = tmp_path_factory.mktemp("two-photos")
    for name in ("chelsea", "coffee"):
        shutil.copy(photos[name], folder / f"{name}.png")
    return folder


@pytest.mark.slow
def test_submit_label_and_wait_writes_the_parquet(head, client_env, cat_and_coffee, tmp_path):
    output = tmp_path / "labels"
    started = time.monotonic()
    result = pipeline("submit", "label", str(cat_and_coffee), str(output), "--top-k", "3",
                      "--env", "TF_CPP_MIN_LOG_LEVEL=2",  # the job's own env var, also set in the workers
                      "--address", head.address, "--wait", env=client_env)
    print(f"submit label --wait: {time.monotonic() - started:.1f} s")
    assert result.exit_code == 0, result.output
    job_id = result.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert "labeled 2 images" in result.stdout  # the job's own summary line, streamed from the cluster

    table = pd.read_parquet(output)
    assert set(CONTRACT_COLUMNS) <= set(table.columns)
    assert len(table) == 2 and table["error"].isna().all()
    rows = table.set_index(table["path"].map(lambda p: Path(p).stem))
    assert rows.loc["chelsea", "label"] in CAT_CLASSES
    assert len(rows.loc["chelsea", "top_labels"]) == 3

    listing = pipeline("jobs", "list", "--address", head.address, env=client_env)
    assert listing.exit_code == 0 and job_id in listing.stdout and "SUCCEEDED" in listing.stdout
    status = pipeline("jobs", "status", job_id, "--address", head.address, env=client_env)
    assert status.exit_code == 0 and status.stdout.strip() == "SUCCEEDED"
    logs = pipeline("jobs", "logs", job_id, "--address", head.address, env=client_env)
    assert logs.exit_code == 0 and "python jobs/label.py" in logs.stdout and "labeled 2 images" in logs.stdout
    # The job's driver is where Ray core prints its per-actor warning (ray#53727): the filter runs there too.
    assert "has constructor arguments in the object store" not in logs.stdout + result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("job", ["label", "finetune"])
def test_a_job_that_fails_on_the_cluster_exits_1(head, client_env, tmp_path, job):
    result = pipeline("submit", job, str(tmp_path / "no-such-folder"), str(tmp_path / "out"),
                      "--address", head.address, "--wait", env=client_env)
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.stderr
    job_id = result.stdout.splitlines()[0]
    assert result.stderr.strip().splitlines()[-1] == (  # a headline, not the logs a second time
        f"error: job {job_id} ended FAILED: Job entrypoint command failed with exit code 2")
    assert f"python jobs/{job}.py" in result.stdout  # the job script ran on the cluster...
    assert "no-such-folder" in result.stdout  # ...and its own error message is streamed back


@pytest.mark.slow
def test_stop_a_long_job(head, client_env, photos, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(600):
        os.link(photos["chelsea"], many / f"cat{i:04d}.png")
    submitted = pipeline("submit", "label", str(many), str(tmp_path / "out"), "--batch-size", "4",
                         "--address", head.address, env=client_env)
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()

    deadline = time.monotonic() + 120
    status = ""
    while time.monotonic() < deadline and status != "RUNNING":
        status = pipeline("jobs", "status", job_id, "--address", head.address, env=client_env).stdout.strip()
        assert status in {"PENDING", "RUNNING"}, f"the long job ended before it could be stopped: {status}"
        time.sleep(0.5)
    assert status == "RUNNING"

    stopped = pipeline("jobs", "stop", job_id, "--address", head.address, env=client_env)
    assert stopped.exit_code == 0, stopped.output
    assert stopped.stdout.strip() == "STOPPED"
    status = pipeline("jobs", "status", job_id, "--address", head.address, env=client_env)
    assert status.stdout.strip() == "STOPPED"


def test_a_typo_in_the_job_arguments_fails_before_anything_is_submitted(head, client_env, cat_and_coffee, tmp_path):
    before = pipeline("jobs", "list", "--address", head.address, env=client_env).stdout
    result = pipeline("submit", "label", str(cat_and_coffee), str(tmp_path / "out"), "--top-kk", "3",
                      "--address", head.address, env=client_env)
    assert result.exit_code == 2
    assert "No such option: --top-kk" in result.stderr and "--top-k" in result.stderr
    missing = pipeline("submit", "label", str(cat_and_coffee), "--address", head.address, env=client_env)
    assert missing.exit_code == 2 and "Missing argument" in missing.stderr
    bad_value = pipeline("submit", "finetune", str(cat_and_coffee), str(tmp_path / "model"), "--workers", "two",
                         "--address", head.address, env=client_env)
    assert bad_value.exit_code == 2 and "--workers" in bad_value.stderr
    assert pipeline("jobs", "list", "--address", head.address, env=client_env).stdout == before


def test_status_of_an_unknown_job_is_a_clear_error(head, client_env):
    result = pipeline("jobs", "status", "raysubmit_doesnotexist", "--address", head.address, env=client_env)
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: no job 'raysubmit_doesnotexist' on {head.address}; "
                                     f"see 'pipeline jobs list --address {head.address}'")
    for command in (["logs"], ["stop"]):
        other = pipeline("jobs", *command, "raysubmit_doesnotexist", "--address", head.address, env=client_env)
        assert other.exit_code == 2 and "no job 'raysubmit_doesnotexist'" in other.stderr


def test_an_unreachable_address_is_a_clear_error(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    for args in (["jobs", "list"], ["jobs", "status", "raysubmit_x"],
                 ["submit", "label", str(tmp_path), str(tmp_path / "out")]):
        result = pipeline(*args, "--address", closed)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"error: cannot reach the Ray job server at {closed}")
        assert "Traceback" not in result.output
    client_port = pipeline("jobs", "list", "--address", "ray://127.0.0.1:10001")
    assert client_port.exit_code == 2 and "dashboard URL, e.g. http://HEAD:8265" in client_port.stderr


def test_a_bad_runtime_env_is_refused_before_connecting(tmp_path):
    for text, message in (("{pip:", "--runtime-env is not valid JSON"), ("[1]", "--runtime-env must be a JSON object")):
        result = pipeline("submit", "label", str(tmp_path), str(tmp_path / "out"), "--runtime-env", text,
                          "--address", f"http://127.0.0.1:{free_port()}")
        assert result.exit_code == 2 and result.stderr.startswith(f"error: {message}")


def test_the_token_is_found_where_ray_looks_for_it(head, tmp_path):
    token = head.token_file.read_text()
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    no_token = {"HOME": str(home), "RAY_AUTH_TOKEN": None, "RAY_AUTH_TOKEN_PATH": None}

    refused = pipeline("jobs", "list", "--address", head.address, env=no_token)
    assert refused.exit_code == 2
    assert "requires an auth token and none was found" in refused.stderr
    assert "RAY_AUTH_TOKEN" in refused.stderr and "~/.ray/auth_token" in refused.stderr

    (home / ".ray" / "auth_token").write_text(token + "\n")
    assert pipeline("jobs", "list", "--address", head.address, env=no_token).exit_code == 0
    assert pipeline("jobs", "list", "--address", head.address,
                    env={**no_token, "RAY_AUTH_TOKEN": token}).exit_code == 0

    wrong = pipeline("jobs", "list", "--address", head.address, env={**no_token, "RAY_AUTH_TOKEN": "wrong"})
    assert wrong.exit_code == 2
    assert "rejected the auth token (token from RAY_AUTH_TOKEN)" in wrong.stderr


# -- the shipped KubeRay RayJobs, run as written against a real head -------------------------------------

ROOT = Path(__file__).resolve().parents[1]
RAYJOBS = sorted((ROOT / "cluster").glob("ray-job.*.yaml"))
S3_IDENTITY = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
# Fine-tuning's shipped 5 + 5 epochs at 224 px would take many minutes on a 2-core CI machine: 1 + 1 epochs
# at 96 px (the last value of a repeated flag wins; --image-size is not among the shipped flags).
SMALLER_FINETUNE = ["--epochs", "1", "--fine-tune-epochs", "1", "--image-size", "96"]


def shipped_rayjob(path: Path) -> tuple[list[str], dict]:
    """(entrypoint words, runtime env) exactly as the manifest gives them to the cluster."""
    spec = yaml.safe_load(path.read_text())["spec"]
    return shlex.split(spec["entrypoint"]), yaml.safe_load(spec["runtimeEnvYAML"])


@pytest.fixture(scope="module")
def my_bucket(photos):
    """The manifests' own s3://my-bucket/... on moto (loopback), holding what each job reads."""
    import s3fs
    from sklearn.datasets import load_digits
    from PIL import Image

    with moto_s3() as endpoint:
        fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint})
        fs.mkdir("my-bucket")
        for name, photo in photos.items():
            fs.put_file(str(photo), f"my-bucket/images/{name}{photo.suffix}")
        digits = load_digits()
        for digit in (0, 1):  # two classes of eight real 8x8 digits, enough for 2 workers and a val split
            for n, i in enumerate([i for i in range(len(digits.target)) if digits.target[i] == digit][:8]):
                image = Image.fromarray((digits.images[i] * 255 / 16).astype("uint8")).resize((32, 32))
                with fs.open(f"my-bucket/cats-vs-dogs/train/{digit}/{n}.png", "wb") as f:
                    image.save(f, format="PNG")
        yield fs, endpoint


@pytest.mark.slow
@pytest.mark.parametrize("manifest", RAYJOBS, ids=lambda p: p.name)
def test_each_shipped_rayjob_succeeds_on_a_real_head(head, my_bucket, manifest):
    """The manifest's entrypoint and runtimeEnvYAML (its env_vars included, the case that used to exit 2).

    Stand-ins for what the cluster gives: the image's copy of the code is this checkout (working_dir), the
    pods' bucket identity is S3_IDENTITY plus the endpoint of moto on loopback.
    """
    fs, endpoint = my_bucket
    words, runtime_env = shipped_rayjob(manifest)
    assert set(runtime_env) <= {"env_vars"}, "dependencies belong in the image (cluster/Dockerfile)"
    script = next(w for w in words if w.endswith(".py"))
    args = words[words.index(script) + 1:]
    job = Path(script).stem
    entrypoint = shlex.join(["python", f"jobs/{job}.py", *args, *(SMALLER_FINETUNE if job == "finetune" else [])])
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(head.token_file)
    try:
        cluster = Cluster(head.address)
        started = time.monotonic()
        job_id = cluster.submit(entrypoint, build_runtime_env(
            ROOT, runtime_env, env_vars={**S3_IDENTITY, "AWS_ENDPOINT_URL": endpoint}))
        status = cluster.wait(job_id, timeout=420)
        logs = cluster.logs(job_id)
    finally:
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    print(f"{manifest.name}: {status} in {time.monotonic() - started:.1f} s")
    assert status == "SUCCEEDED", logs[-3000:]
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}
    if job == "label":
        output = args[1]
        assert "labeled 4 images" in logs
        assert "has constructor arguments in the object store" not in logs  # Ray core's warning, filtered
        table = pd.read_parquet(output, storage_options=options)
        assert sorted(Path(p).stem for p in table["path"]) == ["astronaut", "chelsea", "coffee", "rocket"]
        assert table["error"].isna().all() and table["top_labels"].map(len).eq(5).all()
    else:
        output = args[1].removeprefix("s3://").rstrip("/")
        assert "fine-tuned 2 classes" in logs
        assert fs.exists(f"{output}/history.csv")
        assert [row.split(",")[0] for row in fs.cat(f"{output}/history.csv").decode().splitlines()[1:]] == ["1", "2"]


# -- local paths and remote nodes ------------------------------------------------------------------------

def test_local_paths_are_refused_when_the_nodes_run_elsewhere(head, client_env, tmp_path):
    """The loopback head's nodes run here, so local paths work (the tests above); elsewhere they are refused."""
    from pipeline.errors import UserError
    from pipeline.submit import refuse_local_paths, validate_job_args

    os.environ["RAY_AUTH_TOKEN_PATH"] = str(head.token_file)
    try:
        assert Cluster(head.address).node_hostnames() == {socket.gethostname()}
    finally:
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)

    remote = {"gpu-node-1", "gpu-node-2"}
    on_buckets = validate_job_args("label", ["s3://b/in/", "gs://b/out/", "--model", "resnet50", "--weights", "none"])
    refuse_local_paths("label", on_buckets, remote, head.address)  # nothing local: fine
    for args, shown in ((["/data/photos", "s3://b/out/"], "SOURCE '/data/photos'"),
                        (["s3://b/in/", "out"], "OUTPUT 'out'"),
                        (["s3://b/in/", "s3://b/out/", "--model", str(tmp_path / "my-model")], "--model '"),
                        (["s3://b/in/", "s3://b/out/", "--weights", "w.weights.h5"], "--weights 'w.weights.h5'")):
        with pytest.raises(UserError, match="is a path on this machine") as refused:
            refuse_local_paths("label", validate_job_args("label", args), remote, head.address)
        assert str(refused.value).startswith(shown) and "--shared-fs" in str(refused.value)
    with pytest.raises(UserError, match="DATA '/data/train'"):
        refuse_local_paths("finetune", validate_job_args("finetune", ["/data/train", "s3://b/m/"]), remote, head.address)


def test_shared_fs_is_a_submit_option_not_a_job_argument(head, client_env, cat_and_coffee, tmp_path):
    result = pipeline("submit", "label", str(cat_and_coffee), str(tmp_path / "out"), "--shared-fs", "--top-kk", "3",
                      "--address", head.address, env=client_env)
    assert result.exit_code == 2 and "No such option: --top-kk" in result.stderr  # --shared-fs was accepted
