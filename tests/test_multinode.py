"""A real multi-node Ray cluster on this machine: work runs on worker nodes, and a worker node dies mid-run.

The head has no CPUs, as in the shipped manifests (`num-cpus: "0"`): it runs the drivers and nothing
else, so every decode task, predictor actor and training worker must run on a worker node. Each test
adds its own worker node with a custom resource naming it, kills that node's processes mid-run (Ray's
`Cluster.remove_node`, SIGKILL of its raylet and workers), adds another node, and checks the outcome.
SOURCE, DATA and OUTPUT live on S3 (moto on loopback): no node reads another node's disk.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
from PIL import Image
from s3_proxy import moto_s3

IMAGES = 60  # small photos; resnet50 (untrained) makes the forward pass the slow stage: the kill lands mid-run
FAST_FAILURE_DETECTION = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def s3():
    import s3fs

    with moto_s3() as endpoint:
        fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint})
        fs.mkdir("bucket")
        options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}
        yield fs, options


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPUs (drivers only), joined by this test process to read where actors ran."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": FAST_FAILURE_DETECTION})
    ray.init(address=head.address, logging_level="WARNING", log_to_driver=False)
    yield head
    ray.shutdown()
    head.shutdown()


def actor_nodes(class_fragment: str) -> set[str]:
    """Where every actor (alive or dead) whose class name contains ``class_fragment`` runs or last ran.

    Ray's actor table keeps one address per actor: a restarted actor shows its latest node only.
    """
    import ray

    return {info["Address"]["NodeID"] for info in ray._private.state.actors().values()
            if class_fragment in info["ActorClassName"] and info["Address"]["NodeID"]}


def start_job(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the job ended before {what}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.2)


@pytest.mark.slow
def test_labeling_runs_on_worker_nodes_and_survives_losing_one(cluster, s3, photos):
    fs, options = s3
    for i in range(IMAGES):
        photo = list(photos.values())[i % len(photos)]
        buffer = io.BytesIO()
        Image.open(photo).convert("RGB").resize((48, 48)).save(buffer, format="PNG")
        fs.pipe_file(f"bucket/photos/{i:03d}.png", buffer.getvalue())
    node_b = cluster.add_node(num_cpus=2, resources={"node_b": 1})
    cluster.wait_for_nodes()
    started = time.monotonic()
    proc = start_job("label", "s3://bucket/photos", "s3://bucket/labels", "--model", "resnet50",
                     "--weights", "none", "--batch-size", "2", "--batches-per-task", "1", "--rows-per-file", "4",
                     "--address", cluster.address, "--storage-options", json.dumps(options))
    wait_for(lambda: fs.invalidate_cache() or fs.glob("bucket/labels/part-*.parquet"), proc, "a committed part")
    parts_before = len(fs.glob("bucket/labels/part-*.parquet"))  # --rows-per-file 4: at most 4 rows each
    assert actor_nodes("Predictor") == {node_b.node_id}  # the head has no CPUs: all work on node B
    cluster.remove_node(node_b, allow_graceful=False)  # kill -9 of node B's raylet and workers
    node_c = cluster.add_node(num_cpus=2, resources={"node_c": 1})
    output, _ = proc.communicate(timeout=600)
    print(f"two-node labeling with node B killed: {time.monotonic() - started:.1f} s")

    assert proc.returncode == 0, output[-3000:]
    assert 4 * parts_before < IMAGES, "the kill came after the job had finished"
    assert f"labeled {IMAGES} images (0 errors" in output
    fs.invalidate_cache()
    frame = pd.read_parquet("s3://bucket/labels", storage_options=options)
    assert frame["path"].is_unique and len(frame) == IMAGES  # every image exactly once
    assert set(frame["path"]) == {f"s3://bucket/photos/{i:03d}.png" for i in range(IMAGES)}
    assert actor_nodes("Predictor") == {node_c.node_id}  # restarted on the node added back, finished there
    cluster.remove_node(node_c)


def _digits_on_s3(fs, prefix: str, per_class: int = 12) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for digit in (0, 1, 2):
        indices = [i for i in range(len(digits.target)) if digits.target[i] == digit][:per_class]
        for n, i in enumerate(indices):
            buffer = io.BytesIO()
            Image.fromarray((digits.images[i] * 255 / 16).astype("uint8")).resize((32, 32)).save(buffer, "PNG")
            fs.pipe_file(f"{prefix}/{digit}/{n:03d}.png", buffer.getvalue())


def _checkpointed_epoch(fs, output: str) -> int:
    fs.invalidate_cache()
    try:
        text = fs.cat(f"{output}/checkpoints/checkpoint_manager_snapshot.json").decode()
    except FileNotFoundError:
        return 0
    return max((int(part[:4]) for part in text.split("epoch_")[1:] if part[:4].isdigit()), default=0)


@pytest.mark.slow
def test_fine_tuning_on_a_worker_node_resumes_after_losing_it(cluster, s3):
    """Ray Train does not retry here (no FailureConfig): the job exits 1, and --resume continues."""
    fs, options = s3
    _digits_on_s3(fs, "bucket/digits")
    node_b = cluster.add_node(num_cpus=2, resources={"node_b": 1})
    cluster.wait_for_nodes()
    args = ["finetune", "s3://bucket/digits", "s3://bucket/model", "--workers", "2", "--epochs", "8",
            "--image-size", "32", "--batch-size", "8", "--no-augment", "--address", cluster.address,
            "--storage-options", json.dumps(options)]
    started = time.monotonic()
    proc = start_job(*args)
    wait_for(lambda: _checkpointed_epoch(fs, "bucket/model") >= 1, proc, "a checkpoint")
    cluster.remove_node(node_b, allow_graceful=False)
    output, _ = proc.communicate(timeout=300)
    done = _checkpointed_epoch(fs, "bucket/model")
    assert proc.returncode == 1, output[-3000:]
    assert "--resume" in output
    assert 1 <= done < 8, "the kill came too late to test resuming"
    assert actor_nodes("TrainWorker") == {node_b.node_id}

    node_c = cluster.add_node(num_cpus=2, resources={"node_c": 1})
    cluster.wait_for_nodes()
    resumed = subprocess.run([sys.executable, "-m", "pipeline", *args, "--resume"], capture_output=True,
                             text=True, timeout=600)
    print(f"two-node fine-tuning, node B killed, resumed on node C: {time.monotonic() - started:.1f} s")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "8 epochs" in resumed.stdout
    fs.invalidate_cache()
    history = pd.read_csv(io.BytesIO(fs.cat("bucket/model/history.csv")))
    assert history["epoch"].tolist() == list(range(1, 9))  # none repeated, none missing
    assert fs.exists("bucket/model/model.keras")
    assert actor_nodes("TrainWorker") == {node_b.node_id, node_c.node_id}  # the first run on B, the resumed on C
    cluster.remove_node(node_c)


@pytest.mark.slow
def test_a_local_model_folder_is_shipped_to_the_worker_node(cluster, s3, photos, tmp_path):
    """A fine-tuned model given as a local folder reaches the actors through Ray's object store."""
    import ray

    from pipeline.finetune.model import build_classifier
    from pipeline.models.artifact import ArtifactMeta, save_artifact
    from pipeline.models.shipping import receive, ship

    fs, options = s3
    model_folder = tmp_path / "my-model"
    classifier = build_classifier("efficientnet_lite0", 32, 2, weights=None, inference_base=False)  # as exported
    save_artifact(classifier, str(model_folder), ArtifactMeta("efficientnet_lite0", 32, ["cat", "coffee"]))
    node_b = cluster.add_node(num_cpus=2, resources={"node_b": 1})
    cluster.wait_for_nodes()

    shipped = ship(str(model_folder))
    moved = tmp_path / "moved-away"
    model_folder.rename(moved)  # the receiving side can only use the shipped bytes

    @ray.remote(resources={"node_b": 0.01}, num_cpus=0)
    def receive_on_node_b(shipped_model):
        local = receive(shipped_model)
        files = {name: open(os.path.join(local, name), "rb").read() for name in sorted(os.listdir(local))}
        return ray.get_runtime_context().get_node_id(), local, files

    node, local, files = ray.get(receive_on_node_b.remote(shipped))
    assert node == node_b.node_id and local != str(model_folder)
    assert files == {name: (moved / name).read_bytes() for name in ("model.keras", "pipeline_model.json")}
    moved.rename(model_folder)

    for name in ("chelsea", "coffee"):
        fs.put_file(str(photos[name]), f"bucket/two/{name}.png")
    result = subprocess.run([sys.executable, "-m", "pipeline", "label", "s3://bucket/two", "s3://bucket/two-labels",
                             "--model", str(model_folder), "--address", cluster.address,
                             "--storage-options", json.dumps(options)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    fs.invalidate_cache()
    frame = pd.read_parquet("s3://bucket/two-labels", storage_options=options)
    assert len(frame) == 2 and set(frame["label"]) <= {"cat", "coffee"}
    assert set(frame["model"]) == {str(model_folder)}  # the name the user gave, not the node's copy
    assert actor_nodes("Predictor") <= {node_b.node_id} | set(_dead_worker_nodes(cluster))
    cluster.remove_node(node_b)


def _dead_worker_nodes(cluster) -> list[str]:
    """Nodes the earlier tests of this module removed (their actors stay in Ray's actor table)."""
    import ray

    return [node["NodeID"] for node in ray.nodes() if not node["Alive"]]


@pytest.mark.slow
def test_fine_tuning_waits_for_an_autoscaling_cluster_to_grow(cluster):
    """The head alone has no CPUs; a node that joins while the check waits (as an autoscaler's would) is used."""
    import threading

    import ray

    from pipeline.errors import UserError
    from pipeline.finetune.job import FinetuneConfig, check_cluster_resources

    config = FinetuneConfig(data="s3://bucket/digits", output="s3://bucket/m", workers=2, address=cluster.address)
    messages: list[str] = []
    with pytest.raises(UserError, match="needs 2 CPUs but the Ray cluster has 0; use fewer workers"):
        check_cluster_resources(config, ray.cluster_resources, wait_seconds=0)  # refused at once, as before

    outcome: list = []

    def check() -> None:
        try:
            check_cluster_resources(config, ray.cluster_resources, wait_seconds=120, progress=messages.append,
                                    poll_seconds=0.5)
            outcome.append("ok")
        except UserError as err:
            outcome.append(err)

    waiting = threading.Thread(target=check)
    waiting.start()
    time.sleep(3.0)
    assert waiting.is_alive() and not outcome  # still waiting for capacity
    joined = cluster.add_node(num_cpus=2)  # Ray's nodes start from the main thread only
    waiting.join(timeout=120)
    assert outcome == ["ok"]
    assert messages == ["--workers 2 needs 2 CPUs but the Ray cluster has 0 now; waiting up to 120 s for it to "
                        "scale up (PIPELINE_SCALE_UP_TIMEOUT changes the wait)"]

    from pipeline.cluster_capacity import scale_up_timeout

    assert scale_up_timeout(cluster.address) == 900 and scale_up_timeout(None) == 0  # a local Ray never grows
    os.environ["PIPELINE_SCALE_UP_TIMEOUT"] = "soon"
    try:
        with pytest.raises(UserError, match="PIPELINE_SCALE_UP_TIMEOUT='soon' should be a number of seconds"):
            scale_up_timeout(cluster.address)
    finally:
        del os.environ["PIPELINE_SCALE_UP_TIMEOUT"]

    gpu_config = FinetuneConfig(data="d", output="o", workers=2, use_gpu=True, address=cluster.address)
    with pytest.raises(UserError) as refused:
        check_cluster_resources(gpu_config, ray.cluster_resources, wait_seconds=2, poll_seconds=0.5)
    assert str(refused.value).startswith("--use-gpu with --workers 2 needs 2 GPUs but the Ray cluster has 0 "
                                         "after waiting 2 s for it to scale up")
    cluster.remove_node(joined)
