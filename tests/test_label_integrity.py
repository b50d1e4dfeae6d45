"""OUTPUT stays exactly-once: one writer per OUTPUT, no mixed settings, no damaged or foreign files, no partial parts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from conftest import BUCKET
from pipeline.cli import app
from pipeline.errors import UserError
from pipeline.label.lease import Lease
from pipeline.results import LEASE_NAME

runner = CliRunner()
N_COPIES = 25  # x 4 photos = 100 images: the first run is still going while the others try


@pytest.fixture()
def many_photos(photo_copies) -> Path:
    return photo_copies(N_COPIES)


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          timeout=600, **kw)


def _counts(out: Path, source: Path) -> tuple[int, int]:
    """(rows lost, rows duplicated) of OUTPUT against SOURCE."""
    frame = pd.read_parquet(out)
    expected = {str(p) for p in source.iterdir()}
    return len(expected - set(frame["path"])), len(frame) - frame["path"].nunique()


@pytest.mark.slow
def test_second_run_is_refused_while_first_writes_and_kill9_does_not_lock_output(many_photos, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "pipeline", "label", str(many_photos), str(out),
                              "--batch-size", "2", "--batches-per-task", "1", "--rows-per-file", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("part-*.parquet")):
            assert first.poll() is None, first.stdout.read()
            assert time.monotonic() < deadline, "no part file appeared"
            time.sleep(0.2)
        second = _cli("label", str(many_photos), str(out), "--resume", "--batch-size", "8")
        assert second.returncode == 2, second.stderr[-2000:]
        assert "being written by another run" in second.stderr and f":{first.pid} since" in second.stderr
        assert second.stderr.count("\n") == 1, second.stderr  # one actionable line
        assert first.poll() is None, "the first run ended before it could be killed"
        os.killpg(first.pid, signal.SIGKILL)  # kill -9: no release, the lease stays behind
        first.wait(30)
    finally:
        try:
            os.killpg(first.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert (out / LEASE_NAME).exists()  # left behind by kill -9, heartbeat still fresh
    written_before = len(pd.read_parquet(out))
    # Same machine, holder process gone: no need to wait for the lease to expire.
    resumed = _cli("label", str(many_photos), str(out), "--resume", "--batch-size", "8")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"took over the lease of a run that stopped: {os.uname().nodename}:{first.pid}" in resumed.stderr
    assert f"{written_before} already done" in resumed.stdout
    assert _counts(out, many_photos) == (0, 0)  # 0 rows lost, 0 duplicated
    assert not (out / LEASE_NAME).exists()  # released at the end


def _hold_and_die(output: str, ttl: float) -> int:
    """A real process takes the lease and is killed with SIGKILL while holding it; returns its pid."""
    code = textwrap.dedent(f"""
        import os, signal
        from pipeline.label.lease import Lease
        Lease.acquire({output!r}, ttl={ttl})
        print(os.getpid(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == -signal.SIGKILL, done.stderr
    return int(done.stdout.strip())


def test_lease_of_a_killed_run_on_this_machine_is_taken_over_at_once(tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    pid = _hold_and_die(out, ttl=600)
    with Lease.acquire(out, ttl=3) as lease:
        assert lease.taken_over is not None and lease.taken_over.holder.endswith(f":{pid}")
        lease.check()  # still ours


def _lease_from_another_machine(out: Path, ttl: float) -> None:
    """What a run on another node leaves in a shared OUTPUT: its process cannot be checked from here."""
    (out / LEASE_NAME).write_text(json.dumps({"token": "t0", "holder": "node-b:4242", "since": "2026-11-23T10:00:00+00:00",
                                              "heartbeat": time.time(), "ttl": ttl}))


def test_lease_from_another_machine_expires_after_its_ttl_or_yields_to_force_unlock(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _lease_from_another_machine(out, ttl=2)
    with pytest.raises(UserError, match="node-b:4242 since .*expires after 2 s.*--force-unlock"):
        Lease.acquire(str(out))
    time.sleep(2.5)
    with Lease.acquire(str(out)) as lease:
        assert lease.taken_over.holder == "node-b:4242"
    _lease_from_another_machine(out, ttl=600)
    with Lease.acquire(str(out), force_unlock=True) as lease:
        assert lease.taken_over.holder == "node-b:4242"


def _race(output: str, contenders: int = 8) -> tuple[int, list[str]]:
    """Start ``contenders`` acquisitions at once; return how many won and the refusals."""
    barrier = threading.Barrier(contenders)
    won, refused, leases = [], [], []

    def contend() -> None:
        barrier.wait()
        try:
            leases.append(Lease.acquire(output, ttl=30))
            won.append(1)
        except UserError as err:
            refused.append(str(err))

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lease in leases:
        lease.release()
    return len(won), refused


@pytest.mark.slow
def test_busy_output_refuses_a_bucket_run_before_it_lists_the_bucket(s3_behind_proxy, photos, tmp_path):
    """A run on an OUTPUT that another live run holds is refused before it sends one request to its SOURCE:
    a bucket of millions takes minutes to list, and the run would have started Ray meanwhile. The same
    run goes ahead once the holder lets go."""
    direct, proxy, options = s3_behind_proxy
    direct.put_file(str(photos["coffee"]), f"{BUCKET}/busy/coffee.png")
    out = tmp_path / "out"
    out.mkdir()
    args = ["label", f"s3://{BUCKET}/busy", str(out), "--weights", "none", "--storage-options", json.dumps(options)]
    with Lease.acquire(str(out)):
        before = proxy.requests
        refused = runner.invoke(app, args)
        assert refused.exit_code == 2 and "being written by another run" in refused.output, refused.output
        assert proxy.requests == before  # not even the listing was sent
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert proxy.requests > before and len(pd.read_parquet(out)) == 1


def test_exactly_one_of_many_simultaneous_runs_gets_the_lease_locally(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    won, refused = _race(str(out))
    assert won == 1 and len(refused) == 7 and "being written by another run" in refused[0]
    assert not (out / LEASE_NAME).exists()


def test_exactly_one_gets_the_lease_on_s3_and_an_expired_one_is_taken_over_once(monkeypatch):
    """S3: the conditional PUT (If-None-Match: *) and the take-over with If-Match, on moto's real server."""
    from s3_proxy import moto_s3

    import s3fs

    from pipeline import storage

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto_s3() as endpoint:
        options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}
        s3fs.S3FileSystem(**options).mkdir("lease-bucket")
        storage.set_storage_options(options)
        try:
            won, refused = _race("s3://lease-bucket/out")
            assert won == 1 and len(refused) == 7, refused
            stale = Lease.acquire("s3://lease-bucket/out", ttl=1)
            stale._stop.set()  # a holder whose heartbeat stopped (as after kill -9)
            time.sleep(1.5)
            won, refused = _race("s3://lease-bucket/out")
            assert won == 1 and len(refused) == 7, refused
            with pytest.raises(Exception, match="lost the lease"):
                stale.check()  # the old holder finds out before its next commit
        finally:
            storage.set_storage_options({})


def _small_run(photo_dir: Path, out: Path, *extra: str):
    return runner.invoke(app, ["label", str(photo_dir), str(out), "--batch-size", "4", *extra])


@pytest.mark.slow
def test_resume_with_other_settings_damaged_and_foreign_files_are_refused(photo_dir, tmp_path, local_ray):
    out = tmp_path / "out"
    assert _small_run(photo_dir, out).exit_code == 0
    rows = len(pd.read_parquet(out))

    top3 = _small_run(photo_dir, out, "--resume", "--top-k", "3")
    assert top3.exit_code == 2 and "top-k: OUTPUT has 5, this run has 3" in top3.output
    other_model = _small_run(photo_dir, out, "--resume", "--model", "mobilenet_v2", "--weights", "none")
    assert other_model.exit_code == 2
    assert "model: OUTPUT has 'efficientnet_lite0', this run has 'mobilenet_v2'" in other_model.output
    assert "weights: OUTPUT has 'imagenet', this run has 'none'" in other_model.output

    damaged = out / "part-99999999-999999-00000-deadbeef.parquet"
    good = sorted(out.glob("part-*.parquet"))[0]
    damaged.write_bytes(good.read_bytes()[:-40])  # a truncated upload
    refused = _small_run(photo_dir, out, "--resume")
    assert refused.exit_code == 2 and damaged.name in refused.output and "damaged" in refused.output
    shown = runner.invoke(app, ["show", str(out)])
    assert shown.exit_code == 2 and damaged.name in shown.output
    damaged.unlink()

    foreign = out / "part-from-elsewhere.parquet"
    pd.DataFrame({"path": ["/x.jpg"], "error": [None]}).to_parquet(foreign)
    refused = _small_run(photo_dir, out, "--resume")
    assert refused.exit_code == 2 and foreign.name in refused.output and "did not write" in refused.output
    overwrite = _small_run(photo_dir, out, "--overwrite")
    assert overwrite.exit_code == 2 and foreign.name in overwrite.output
    assert foreign.exists() and len(list(out.glob("part-*.parquet"))) > 1  # --overwrite removed nothing
    foreign.rename(tmp_path / foreign.name)

    notes = out / "notes.parquet"
    pa.table({"a": [1]}).to_pandas().to_parquet(notes)
    refused = _small_run(photo_dir, out, "--resume")
    assert refused.exit_code == 2 and "notes.parquet" in refused.output
    notes.unlink()

    again = _small_run(photo_dir, out, "--resume")
    assert again.exit_code == 0 and f"{rows} already done" in again.output
    assert len(pd.read_parquet(out)) == rows


@pytest.mark.slow
def test_part_upload_interrupted_never_publishes_a_partial_object(monkeypatch):
    """Ctrl-C while a part is being built or uploaded to S3: the object is whole or absent."""
    from s3_proxy import fault_proxy, moto_s3

    import s3fs

    from pipeline import storage
    from pipeline.label.manifest import RunManifest
    from pipeline.label.output import PartWriter, read_part
    from pipeline.results import SCHEMA

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    n = 200_000
    table = pa.table({
        "path": [f"/img/{i}.jpg" for i in range(n)], "label": ["tabby"] * n, "score": [0.5] * n,
        "top_labels": [["tabby"]] * n, "top_scores": [[0.5]] * n, "top_ids": [[281]] * n,
        "model": ["efficientnet_lite0"] * n, "weights_digest": ["sha256:x"] * n, "error": [None] * n,
    }, schema=SCHEMA)

    def interrupt(*_):
        raise KeyboardInterrupt

    with moto_s3() as endpoint, fault_proxy(endpoint, latency=0.3) as proxy:
        options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": proxy.url},
                   "config_kwargs": {"retries": {"max_attempts": 1}}}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("out-bucket")
        storage.set_storage_options(options)
        previous = signal.signal(signal.SIGALRM, interrupt)
        interrupted = 0
        try:
            for delay in (0.05, 0.2, 0.4, 0.6, 0.9, 1.3):
                manifest = RunManifest("efficientnet_lite0", "imagenet", 1, 224, "/img", "sha256:x")
                writer = PartWriter("s3://out-bucket/out", manifest, rows_per_file=10**9, seconds_per_file=1e9)
                writer.add(table)
                signal.setitimer(signal.ITIMER_REAL, delay)
                try:
                    writer.flush()
                except KeyboardInterrupt:
                    interrupted += 1
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            fs.invalidate_cache()
            published = fs.glob("out-bucket/out/part-*.parquet")
            for key in published:
                assert len(read_part(f"s3://{key}").paths) == n  # whole, or not there at all
        finally:
            signal.signal(signal.SIGALRM, previous)
            storage.set_storage_options({})
        assert interrupted >= 3, "the interrupt never hit a flush"
        # An interrupt that lands after the PUT left may still publish: whole, as checked above.
        assert 6 - interrupted <= len(published) <= 6


@pytest.mark.parametrize("args, message", [
    (["--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
    (["--retry-errors"], "pass it with --resume"),
    (["--max-error-rate", "0"], "--max-error-rate 0.0 should be"),
    (["--concurrency", "4,2"], "MIN,MAX"),
])
def test_label_config_checks_itself_before_any_work(photo_dir, tmp_path, args, message):
    direct = runner.invoke(app, ["label", str(photo_dir), str(tmp_path / "out"), *args])
    assert direct.exit_code == 2 and message in direct.output, direct.output


@pytest.mark.slow
def test_resume_with_other_weights_under_the_same_name_is_refused_before_a_row_is_written(
        photo_dir, tmp_path, lite0, local_ray):
    weights = tmp_path / "lite0.weights.h5"
    lite0.keras_model.save_weights(str(weights))
    out = tmp_path / "out"
    assert _small_run(photo_dir / "coffee.png", out, "--weights", str(weights)).exit_code == 0
    before = sorted(p.name for p in out.iterdir())
    original = [w.copy() for w in lite0.keras_model.get_weights()]
    try:
        lite0.keras_model.set_weights([w * 1.01 for w in original])
        lite0.keras_model.save_weights(str(weights))  # same path, other contents
    finally:
        lite0.keras_model.set_weights(original)
    resumed = _small_run(photo_dir, out, "--resume", "--weights", str(weights))
    assert resumed.exit_code == 2, resumed.output
    # Caught before Ray starts (the manifest's model identity carries the file's sha256), or at the latest
    # by the digest of the weights the predictors loaded, before a row is committed.
    assert "weights_sha256" in resumed.output or "different file contents" in resumed.output
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.slow
def test_s3_outage_mid_run_stores_no_transient_error_rows_and_resume_finishes_exactly_once(photos, tmp_path):
    """Images and OUTPUT on S3 behind the fault proxy; a 503 SlowDown outage outlasting botocore's retries."""
    from s3_proxy import fault_proxy, moto_s3

    import s3fs

    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": os.getcwd()}
    with moto_s3() as endpoint, fault_proxy(endpoint) as proxy:
        direct = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint})
        direct.mkdir("outage")
        for i in range(8):
            for name, path in photos.items():
                direct.put_file(str(path), f"outage/in/{i:02d}_{name}{path.suffix}")
        expected = {f"s3://{key}" for key in direct.find("outage/in")}
        # Few client-side retries, so the outage outlasts them quickly (real runs keep the defaults).
        options = json.dumps({"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": proxy.url},
                              "config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}})
        args = [sys.executable, "-m", "pipeline", "label", "s3://outage/in", "s3://outage/out", "--weights", "none",
                "--batch-size", "2", "--batches-per-task", "1", "--rows-per-file", "2", "--read-retries", "1",
                "--storage-options", options]
        run = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            deadline = time.monotonic() + 300
            while not direct.glob("outage/out/part-*.parquet"):
                direct.invalidate_cache()
                assert run.poll() is None, run.stdout.read()[-3000:]
                assert time.monotonic() < deadline, "no part file appeared"
                time.sleep(0.2)
            proxy.outage(600)  # reads, part uploads, heartbeats: every request gets 503 SlowDown
            outage_started = time.monotonic()
            output, _ = run.communicate(timeout=300)
            print(f"outage: the run ended {time.monotonic() - outage_started:.1f} s into the outage")
        finally:
            proxy.heal()
            if run.poll() is None:
                run.kill()
        assert run.returncode != 0, output[-3000:]
        assert proxy.refused > 0
        direct.invalidate_cache()
        before = pd.read_parquet("s3://outage/out", storage_options={
            "key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint},
            "skip_instance_cache": True})
        assert 0 < len(before) < len(expected)
        assert before["error"].isna().all(), before["error"].dropna().head()  # no outage stored as an error row

        resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600, env=env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        frame = pd.read_parquet("s3://outage/out", storage_options={
            "key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint},
            "skip_instance_cache": True})
    lost, duplicated = len(expected - set(frame["path"])), len(frame) - frame["path"].nunique()
    transient_error_rows = int(frame["error"].notna().sum())
    print(f"outage: {len(before)} rows before, lost={lost} duplicated={duplicated} "
          f"transient_error_rows={transient_error_rows}")
    assert (lost, duplicated, transient_error_rows) == (0, 0, 0)
