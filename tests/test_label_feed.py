"""The labeling job's feed: decoding beside inference, concurrent reads, transient vs permanent errors, progress."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.label.config import LabelConfig, LabelSummary
from pipeline.label.feed import read_and_decode
from pipeline.label.progress import Progress
from conftest import BUCKET

runner = CliRunner()


def test_decode_and_inference_are_separate_operators(photo_dir, tmp_path):
    """Ray Data must not fuse the decode into the predictor actor, even with equal CPU reservations."""
    from pipeline.label.job import label_dataset
    from pipeline.models.resolved import resolve_model
    from pipeline.ray_session import ray_session

    paths = sorted(str(p) for p in photo_dir.iterdir())
    plans = []
    with ray_session(None):
        for cpus in (1.0, 0.5):
            config = LabelConfig(source=str(photo_dir), output=str(tmp_path / "out"), weights="none",
                                 cpus_per_decode=cpus, cpus_per_actor=cpus)
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                label_dataset(config, paths, resolve_model(config.model)).explain()
            plans.append(buffer.getvalue().split("Physical Plan (Optimized)")[-1])
    for plan in plans:
        assert "TaskPoolMapOperator[MapBatches(read_and_decode)]" in plan, plan
        assert "ActorPoolMapOperator[MapBatches(Predictor)]" in plan, plan
        assert "read_and_decode)->" not in plan, plan


def test_the_job_is_planned_without_a_ray_task_even_when_every_cpu_is_taken(photo_dir, tmp_path):
    """The driver builds the input blocks and their metadata itself. ray.data.from_arrow ran a task per block
    to read the metadata back (9-13 s for a million paths) and blocked while the cluster had no free CPU."""
    import threading

    import ray

    from pipeline.label.job import label_dataset
    from pipeline.models.resolved import resolve_model
    from pipeline.ray_session import ray_session

    @ray.remote
    class Hog:
        def ping(self) -> int:
            return 1

    paths = sorted(str(p) for p in photo_dir.iterdir()) * 20
    config = LabelConfig(source=str(photo_dir), output=str(tmp_path / "out"), weights="none",
                         concurrency=(1, 1), batch_size=4, batches_per_task=2)
    with ray_session(None):
        hog = Hog.options(num_cpus=ray.cluster_resources()["CPU"]).remote()
        ray.get(hog.ping.remote())  # every CPU is held from here on
        planned: list = []
        model = resolve_model(config.model)
        worker = threading.Thread(target=lambda: planned.append(label_dataset(config, paths, model)), daemon=True)
        worker.start()
        worker.join(timeout=60)
        assert planned, "building the dataset waited for a free CPU"


def test_decoded_backlog_is_bounded_by_the_actors_not_the_images(photo_dir, tmp_path):
    """Peak memory must not grow with the job: the object store may hold a few blocks per actor."""
    from ray.data import DataContext

    from pipeline.label.job import IMAGES_BUFFERED_PER_ACTOR, blocks_buffered_per_actor, label_dataset
    from pipeline.models.resolved import resolve_model
    from pipeline.ray_session import ray_session

    paths = sorted(str(p) for p in photo_dir.iterdir())
    limits = []
    with ray_session(None):
        for actors, images in ((1, paths), (2, paths * 50)):
            config = LabelConfig(source=str(photo_dir), output=str(tmp_path / "out"), weights="none",
                                 concurrency=(actors, actors), batch_size=4, batches_per_task=2)
            label_dataset(config, images, resolve_model(config.model))
            limits.append(DataContext.get_current().execution_options.resource_limits.object_store_memory)
    per_actor = IMAGES_BUFFERED_PER_ACTOR * 224 * 224 * 3  # blocks of 8 images: 96 of them
    assert limits == [per_actor, 2 * per_actor]
    assert blocks_buffered_per_actor(128) == 6 and blocks_buffered_per_actor(256) == 3
    assert blocks_buffered_per_actor(32 * 8 * 4) == 3  # big GPU blocks: one worked on, one next, one decoding


@pytest.mark.slow
def test_cpu_actors_run_tensorflow_on_their_own_share_of_threads():
    """Actors side by side on a CPU node each compute on their CPU share, not on every core at once."""
    import ray

    from pipeline.label.job import actor_cpu_threads
    from pipeline.label.predictor import Predictor
    from pipeline.ray_session import ray_session

    assert actor_cpu_threads(LabelConfig(source="s", output="o")) == 1  # 0.75 CPU: one thread
    assert actor_cpu_threads(LabelConfig(source="s", output="o", cpus_per_actor=3)) == 3
    assert actor_cpu_threads(LabelConfig(source="s", output="o", num_gpus=0.5)) is None  # threads only feed the GPU
    with ray_session(None):
        actor = ray.remote(num_cpus=0.5)(Predictor).remote(
            model="mobilenet_v2", weights="none", top_k=1, batch_size=2, storage_options={}, cpu_threads=1)
        threads = ray.get(actor.__ray_call__.remote(lambda self: (
            self.cpu_threads, os.environ["TF_NUM_INTRAOP_THREADS"], os.environ["OMP_NUM_THREADS"])))
    assert threads == (1, "1", "1")


@pytest.mark.slow
def test_predictor_actor_loads_keras_without_scikit_learn_and_pyplot_yet_both_still_import():
    """Keras imports scikit-learn and matplotlib.pyplot at load when they are installed (1.4 s of CPU in every
    actor, for wrappers and plots an actor never uses); the actor leaves them out, and a user's layer can still
    import them afterwards."""
    import importlib.util

    import ray

    from pipeline.label.predictor import Predictor
    from pipeline.ray_session import ray_session

    assert importlib.util.find_spec("sklearn") is not None, "the test extra installs scikit-learn"

    def modules(self):
        import sys

        loaded = ("sklearn" in sys.modules, "matplotlib.pyplot" in sys.modules)
        import matplotlib.pyplot  # noqa: F401
        import sklearn.linear_model  # noqa: F401

        return loaded, self.classifier.predict(np.zeros((1, 224, 224, 3), np.uint8)).ids.shape

    with ray_session(None):
        actor = ray.remote(num_cpus=0.5)(Predictor).remote(
            model="mobilenet_v2", weights="none", top_k=1, batch_size=2, storage_options={}, cpu_threads=1)
        assert ray.get(actor.__ray_call__.remote(modules)) == ((False, False), (1, 1))


@pytest.mark.slow
def test_cpu_forward_pass_reuses_host_memory_instead_of_faulting_it_in_again():
    """TensorFlow's default CPU allocator returned each batch's activations to the OS and page-faulted them
    in again on the next batch (5,000 faults an image for MobileNetV2): 38% of the forward pass in the kernel.
    The actor warms up on a whole batch, so even its first batch finds the memory it needs."""
    import ray

    from pipeline.label.predictor import Predictor
    from pipeline.ray_session import ray_session

    def faults_of_one_batch(self, images):
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self.classifier.predict(images)  # the first batch: only the constructor's warm-up ran before it
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    images = np.random.default_rng(0).integers(0, 255, (32, 224, 224, 3), dtype=np.uint8)
    with ray_session(None):
        actor = ray.remote(num_cpus=0.5)(Predictor).remote(
            model="mobilenet_v2", weights="none", top_k=1, batch_size=32, storage_options={}, cpu_threads=1)
        faults = ray.get(actor.__ray_call__.remote(faults_of_one_batch, images))
    assert faults < 2000, (f"{faults} page faults for the first batch of 32 (about 160,000 with the default "
                           "allocator, 120,000 after a 1-image warm-up)")


def test_decode_task_marks_outage_as_transient_and_missing_as_permanent(s3_behind_proxy, photos):
    direct, proxy, options = s3_behind_proxy
    direct.put_file(str(photos["coffee"]), f"{BUCKET}/unit/coffee.png")
    direct.pipe_file(f"{BUCKET}/unit/empty.png", b"")
    paths = [f"s3://{BUCKET}/unit/coffee.png", f"s3://{BUCKET}/unit/missing.png", f"s3://{BUCKET}/unit/empty.png"]
    batch = {"path": paths}

    read_and_decode({"path": paths[:1]}, 32, options, retries=0)  # warm the client first
    before = proxy.requests
    ok = read_and_decode({"path": paths[:1]}, 32, options, retries=0)
    assert proxy.requests - before == 1  # one GET per object, no HEAD first
    ok = read_and_decode(batch, 32, options, retries=0)
    assert list(ok["transient"]) == [False, False, False]
    assert ok["error"][0] == "" and ok["image"][0].std() > 10
    assert ok["error"][1].startswith("not found")
    assert ok["error"][2].startswith("empty file")  # permanent: an error row, not a retry

    proxy.outage(600, only=f"/{BUCKET}/unit/")
    try:
        started = time.monotonic()
        failed = read_and_decode(batch, 32, options, retries=1)
        waited = time.monotonic() - started
    finally:
        proxy.heal()
    assert list(failed["transient"]) == [True, True, True]  # a 503 says nothing about the object
    assert "unreadable after retries" in failed["error"][0]
    assert waited >= 0.5  # one backoff round before giving up
    assert proxy.refused >= 2


@pytest.mark.slow
def test_outage_longer_than_retries_stores_nothing_for_those_images_and_resume_finishes(
        s3_behind_proxy, photos, tmp_path):
    direct, proxy, options = s3_behind_proxy
    for name, path in photos.items():
        direct.put_file(str(path), f"{BUCKET}/in/{name}{path.suffix}")
    direct.pipe_file(f"{BUCKET}/in/broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    out = str(tmp_path / "out")
    args = ["label", f"s3://{BUCKET}/in", out, "--weights", "none", "--batch-size", "2",
            "--batches-per-task", "1", "--storage-options", json.dumps(options), "--read-retries", "1"]

    proxy.outage(600, only=f"/{BUCKET}/in/")  # every object read fails; listing still works
    try:
        failed = runner.invoke(app, args)
    finally:
        proxy.heal()
    assert failed.exit_code == 1, failed.output
    assert "5 images could not be read after retries" in failed.output
    assert "--resume" in failed.output
    stored = pd.read_parquet(out) if any(p.name.startswith("part-") for p in (tmp_path / "out").iterdir()) \
        else pd.DataFrame(columns=["path", "error"])
    assert len(stored) == 0  # nothing was committed as done: no error row for a transient failure

    proxy.drop_next(3)  # a few connection resets on the way: the client's retries absorb them
    proxy.seen.clear()
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    agents = [agent for method, path, agent, _ in proxy.seen if method == "GET" and f"/{BUCKET}/in/" in path]
    assert len(agents) >= 5 and all(agent.startswith("object_store") for agent in agents), agents  # the Ray
    # workers' image reads: obstore, not s3fs (pipeline/s3_reads.py)
    frame = pd.read_parquet(out)
    assert len(frame) == 5 and frame["path"].is_unique
    errors = frame.set_index("path")["error"]
    assert errors.drop(f"s3://{BUCKET}/in/broken.jpg").isna().all()
    assert errors[f"s3://{BUCKET}/in/broken.jpg"].startswith(("truncated", "not an image", "unreadable"))
    assert not frame["error"].fillna("").str.contains("after retries").any()


def test_progress_line_counts_images_with_rate_and_eta(monkeypatch):
    import pipeline.label.progress as progress

    clock = iter([0.0, 12.0, 14.0])  # start, first arrival, second arrival
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    meter = Progress(1000, stream=stream, log_every=0.0)
    meter.update(100, 0)  # the first arrival ends start-up
    meter.update(100, 3)
    meter.close()
    lines = stream.getvalue().splitlines()
    assert lines[-1] == "200/1,000 images (20%), 50.0 images/s, ETA 16s, 3 errors"
    assert meter.startup_seconds == 12.0
    assert meter.steady_rate() == 50.0  # 100 rows over 2 s: the first arrival is not in the rate
    assert "\r" not in stream.getvalue()  # a log, not a terminal: whole lines


def test_a_burst_of_results_is_no_steady_rate(monkeypatch):
    """Blocks that finish together must not print a rate of thousands of images/s."""
    import pipeline.label.progress as progress

    clock = iter([0.0, 10.0, 10.002, 10.004])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    meter = Progress(600, stream=io.StringIO(), log_every=0.0)
    for _ in range(3):
        meter.update(120, 0)
    assert meter.startup_seconds == 10.0
    assert meter.steady_rate() == 0.0


# a short job (the demo's 29 photos: every result back at once) and a long one with a steady rate
SHORT_JOB = dict(listed=29, skipped=0, labeled=29, errors=1, ignored=13, seconds=17.2, startup_seconds=16.0)
LONG_JOB = dict(listed=6000, skipped=0, labeled=6000, errors=0, ignored=0, seconds=45.0, startup_seconds=14.0,
                steady_images_per_second=193.5)


def test_summary_gives_steady_rate_apart_from_start_up_and_no_overall_rate_for_a_short_job():
    """29 photos in 17.2 s, 16.0 of them before the first result: "1.7 images/s" would read as throughput."""
    line = LabelSummary(**SHORT_JOB).line("out/")
    assert line == ("labeled 29 images (1 error, 13 ignored files, 0 already done) in 17.2 s: 16.0 s to the first "
                    "result (starting Ray, TensorFlow and the model), too few images for a steady rate -> out/")
    assert "images/s" not in line
    assert LabelSummary(**LONG_JOB).line("out/") == (
        "labeled 6,000 images (0 errors, 0 ignored files, 0 already done) in 45.0 s: "
        "133.3 images/s (14.0 s to the first result, steady 193.5 images/s) -> out/")
    done = LabelSummary(listed=29, skipped=29, labeled=0, errors=0, ignored=0, seconds=3.0)
    assert done.line("out/") == ("labeled 0 images (0 errors, 0 ignored files, 29 already done) in 3.0 s: "
                                 "nothing new to label -> out/")
    outage = LabelSummary(listed=600, skipped=0, labeled=0, errors=0, ignored=0, seconds=30.0, transient=600)
    assert outage.line("out/") == ("labeled 0 images (0 errors, 0 ignored files, 0 already done) in 30.0 s: "
                                   "no rows written; 600 images not read (transient storage errors), left for "
                                   "--resume -> out/")


def test_benchmark_reads_both_summary_lines():
    """benchmarks/label_feed.py parses the job's summary: a change to the line must not break it silently."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "label_feed.py"
    spec = importlib.util.spec_from_file_location("label_feed_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.SUMMARY.search(LabelSummary(**SHORT_JOB).line("o")).groups() == ("29", "17.2", "16.0", None)
    assert bench.SUMMARY.search(LabelSummary(**LONG_JOB).line("o")).groups() == ("6,000", "45.0", "14.0", "193.5")


@pytest.mark.slow
def test_console_shows_our_lines_not_ray_or_tensorflow_chatter_unless_verbose(photo_dir, tmp_path):
    """A real process, as a user runs it: the summary separates start-up from the steady rate."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "pipeline", "label", str(photo_dir), str(tmp_path / "out"), "--weights",
               "none", "--batch-size", "1", "--batches-per-task", "1"]
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0, quiet.stderr
    line = quiet.stdout.strip().splitlines()[-1]
    assert line.startswith("labeled 4 images (0 errors")
    assert " s to the first result" in line  # 4 one-image results come back within a second: no steady rate
    assert "Execution plan" not in quiet.stderr, quiet.stderr
    assert " pid=" not in quiet.stderr, quiet.stderr  # no worker output forwarded: "(MapWorker(...) pid=N) ..."
    assert "Progress bars disabled" not in quiet.stderr, quiet.stderr
    restarts_warning = "has constructor arguments in the object store"  # Ray core's, for each actor (ray#53727)
    assert restarts_warning not in quiet.stderr, quiet.stderr
    verbose = subprocess.run([*command, "--overwrite", "--verbose"], capture_output=True, text=True, timeout=600)
    assert verbose.returncode == 0, verbose.stderr
    assert "Execution plan" in verbose.stderr
    assert restarts_warning in verbose.stderr


@pytest.mark.slow
def test_xla_and_mixed_precision_keep_the_labels(photo_dir, tmp_path):
    """--xla and --precision mixed reach the model (scores move by float rounding) and keep every label of the
    default float32 forward pass (the one classify runs in this process)."""
    import pipeline

    paths = sorted(str(p) for p in photo_dir.iterdir())
    base = pd.DataFrame([(path, p.label, p.score) for path, p in zip(paths, pipeline.classify(paths, top_k=1))],
                        columns=["path", "label", "score"]).set_index("path")
    assert base.loc[str(photo_dir / "coffee.png"), "label"] == "espresso"
    for name, flags in {"xla": ["--xla"], "mixed": ["--precision", "mixed"]}.items():
        out = tmp_path / name
        result = runner.invoke(app, ["label", str(photo_dir), str(out), "--top-k", "1", *flags])
        assert result.exit_code == 0, result.output
        run = pd.read_parquet(out).set_index("path").sort_index()
        assert (run["label"] == base["label"]).all(), name
        difference = (run["score"] - base["score"]).abs()
        assert difference.max() < 0.05, name
        if name == "mixed":
            assert (run["score"] != base["score"]).any()  # float16 compute really ran


def test_decode_task_honours_the_resize_mode(tmp_path):
    from PIL import Image

    thirds = np.zeros((60, 180, 3), np.uint8)
    thirds[:, :60, 0] = thirds[:, 60:120, 1] = thirds[:, 120:, 2] = 255
    path = tmp_path / "thirds.png"
    Image.fromarray(thirds).save(path)
    crop = read_and_decode({"path": [str(path)]}, 32, {}, resize_mode="center-crop")["image"][0]
    squash = read_and_decode({"path": [str(path)]}, 32, {})["image"][0]
    assert crop[..., 1].min() > 200 and crop[..., 0].max() < 50
    assert squash[..., 0].max() > 200 and squash[..., 2].max() > 200


@pytest.mark.slow
def test_ray_starts_while_a_slow_bucket_listing_runs(s3_behind_proxy, photos, tmp_path):
    """Listing a bucket and starting Ray overlap: when the listing is done, Ray is already up."""
    import ray

    from pipeline.label.job import run_label_job

    direct, proxy, options = s3_behind_proxy
    for name in ("coffee", "chelsea"):
        direct.put_file(str(photos[name]), f"{BUCKET}/slow-list/{name}.png")
    ray_at_listed = []

    def progress(line: str) -> None:
        if "images listed" in line:
            ray_at_listed.append(ray.is_initialized())

    proxy.latency = 1.0  # every request, the listing's included, waits a second
    try:
        summary = run_label_job(LabelConfig(source=f"s3://{BUCKET}/slow-list", output=str(tmp_path / "out"),
                                            weights="none", batch_size=2, storage_options=options), progress)
    finally:
        proxy.latency = 0.0
    assert ray_at_listed == [True]
    assert summary.labeled == 2 and summary.errors == 0
    assert not ray.is_initialized()  # and the job's Ray is shut down at the end
