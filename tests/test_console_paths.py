"""What a user meets at the console: wrong paths refused in one line before the work, show's notes, an
interrupt that says how to finish, part files of the size asked for."""

from __future__ import annotations

import glob
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.label.lease import Lease
from pipeline.label.manifest import RunManifest
from pipeline.label.output import PartWriter
from pipeline.results import result_schema

runner = CliRunner()


def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def _synthetic_output(out: Path, labels: list[str], rows_per_file: int = 10_000) -> None:
    """An OUTPUT of committed rows, one per (label, copy), written by the job's own PartWriter."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = RunManifest(model="efficientnet_lite0", weights="imagenet", top_k=1, input_size=224, source="s",
                           model_identity={"kind": "registry", "name": "efficientnet_lite0", "classes": 1000})
    writer = PartWriter(str(out), manifest, rows_per_file=rows_per_file, seconds_per_file=float("inf"))
    schema = result_schema(False)
    columns = {f.name: pa.nulls(len(labels), f.type) for f in schema}
    columns.update(path=pa.array([f"/photos/{i:05d}.jpg" for i in range(len(labels))]), label=pa.array(labels),
                   score=pa.array([0.5] * len(labels)), model=pa.array(["efficientnet_lite0"] * len(labels)))
    writer.add(pa.table(columns, schema=schema))
    writer.flush()


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, photos) -> Path:
    """A real labeling job's OUTPUT over the scikit-image photos."""
    source = tmp_path_factory.mktemp("photos")
    for name, path in photos.items():
        os.symlink(path, source / path.name)
    out = tmp_path_factory.mktemp("runs") / "labeled"
    result = runner.invoke(app, ["label", str(source), str(out), "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_report_refuses_a_folder_or_a_path_it_cannot_write_before_any_thumbnail(labeled, tmp_path, monkeypatch):
    import pipeline.report as report

    drawn = []
    monkeypatch.setattr(report, "_thumbnail", lambda path: drawn.append(path))
    folder = tmp_path / "reports"
    folder.mkdir()
    line = _one_line_error(runner.invoke(app, ["report", str(labeled), str(folder)]))
    assert "is a folder" in line and "report.html" in line
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = _one_line_error(runner.invoke(app, ["report", str(labeled), str(blocker / "r.html")]))
    assert "cannot write REPORT" in line
    assert drawn == [], "thumbnails were made before REPORT was checked"


@pytest.mark.slow
def test_report_creates_a_missing_folder(labeled, tmp_path):
    target = tmp_path / "new" / "deeper" / "review.html"
    result = runner.invoke(app, ["report", str(labeled), str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text().startswith("<!DOCTYPE html>") or "<html" in target.read_text()[:200]


def test_show_says_a_missing_output_does_not_exist(tmp_path):
    line = _one_line_error(runner.invoke(app, ["show", str(tmp_path / "nothing")]))
    assert "does not exist" in line
    (tmp_path / "empty").mkdir()
    assert "holds no results" in _one_line_error(runner.invoke(app, ["show", str(tmp_path / "empty")]))


def test_show_says_when_a_run_is_in_progress(tmp_path):
    out = tmp_path / "out"
    _synthetic_output(out, ["cat"] * 3)
    with Lease.acquire(str(out), ttl=60):
        shown = runner.invoke(app, ["show", str(out)])
    assert shown.exit_code == 0, shown.output
    assert "a run is in progress (lease held by" in shown.output
    assert "committed so far" in shown.output
    after = runner.invoke(app, ["show", str(out)])
    assert "in progress" not in after.output


def test_show_says_how_many_labels_it_left_out_and_all_lists_them(tmp_path):
    out = tmp_path / "out"
    labels = [f"class-{i:02d}" for i in range(15) for _ in range(i + 1)]  # 15 labels, 120 rows
    _synthetic_output(out, labels)
    shown = runner.invoke(app, ["show", str(out), "--limit", "3"])
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("120 rows, 0 errors")
    counts = shown.output.split("label counts:")[1].split("least confident:")[0]
    assert [line.split()[1] for line in counts.strip().splitlines()[:3]] == ["class-14", "class-13", "class-12"]
    assert "... 12 more labels (78 rows); --all lists them" in counts  # 120 - 15 - 14 - 13
    every = runner.invoke(app, ["show", str(out), "--limit", "3", "--all"])
    listed = every.output.split("label counts:")[1].split("least confident:")[0]
    assert sum(line.strip().startswith(tuple("0123456789")) for line in listed.splitlines()) == 15
    assert "more label" not in listed
    manifest = every.output.split("run manifest")[1]
    assert "{" not in manifest and "  model_identity:\n    classes: 1000\n    kind: registry\n" in manifest


def test_one_row_and_one_error_are_singular(tmp_path):
    out = tmp_path / "out"
    _synthetic_output(out, ["cat"])
    assert runner.invoke(app, ["show", str(out)]).output.startswith("1 row, 0 errors")


def test_rows_per_file_means_parts_of_exactly_that_many_rows(tmp_path):
    """Batches of 256 into parts of 200: 200-row parts and one shorter last part, every row once."""
    manifest = RunManifest(model="m", weights="none", top_k=1, input_size=224, source="s")
    writer = PartWriter(str(tmp_path), manifest, rows_per_file=200, seconds_per_file=float("inf"))
    schema = result_schema(False)
    start = 0
    for size in (256, 256, 256, 256, 177):
        columns = {f.name: pa.nulls(size, f.type) for f in schema}
        columns["path"] = pa.array([f"p{i}" for i in range(start, start + size)])
        writer.add(pa.table(columns, schema=schema))
        start += size
    writer.flush()
    parts = sorted(glob.glob(str(tmp_path / "part-*.parquet")))
    assert [pq.ParquetFile(p).metadata.num_rows for p in parts] == [200] * 6 + [1201 - 1200]
    frame = pd.read_parquet(tmp_path)
    assert frame["path"].is_unique and len(frame) == 1201 == writer.rows_committed


def _signal_masks(pid: int) -> list[str]:
    """The driver's blocked, ignored and caught signal masks: when a run finishes as if no Ctrl-C came, they
    show whether SIGINT could reach a Python handler at all."""
    with open(f"/proc/{pid}/status") as f:
        return [line for line in f.read().splitlines() if line.startswith(("SigBlk", "SigIgn", "SigCgt"))]


@pytest.mark.slow
def test_ctrl_c_says_what_is_safe_and_the_printed_command_finishes_the_job(photo_copies, tmp_path):
    source = photo_copies(40)  # 160 images: a job still running when its first parts land, even under load
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline", "label", str(source), str(out), "--batch-size", "2",
           "--batches-per-task", "1", "--rows-per-file", "2", "--top-k", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not list(out.glob("part-*.parquet")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    masks = _signal_masks(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground group
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (masks, stdout + stderr)
    assert "Traceback" not in stderr, stderr
    said = [line for line in stderr.splitlines() if line.startswith("interrupted: ")]
    assert len(said) == 1, stderr
    assert "this run committed" in said[0] and "left to label: --resume finishes the job" in said[0]
    committed = len(pd.read_parquet(out))
    assert f"committed {committed:,} row" in said[0]
    finish = shlex.split(said[0].split("; to finish: ", 1)[1])
    assert finish[:4] == ["pipeline", "label", str(source), str(out)] and finish[-1] == "--resume"
    assert "--top-k" in finish and "3" in finish  # the options given are kept
    done = subprocess.run([sys.executable, "-m", *finish], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    frame = pd.read_parquet(out)
    assert frame["path"].is_unique and set(frame["path"]) == {str(p) for p in source.iterdir()}
    assert f"{committed:,} already done" in done.stdout


@pytest.mark.parametrize("args, says", [
    (["--model", "resnet5"], "did you mean resnet50"),
    (["--weights", "/nowhere/weights.h5"], "--weights '/nowhere/weights.h5' does not exist here"),
    (["--concurrency", "3,1"], "should be auto, N or MIN,MAX"),
    (["--retry-errors"], "pass it with --resume"),
])
def test_submit_makes_the_jobs_own_checks_before_reaching_the_cluster(tmp_path, args, says):
    """A closed port as the cluster: had submit tried to reach it, the error would be 'cannot reach'."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = runner.invoke(app, ["submit", "label", "s3://bucket/photos", "s3://bucket/out", *args,
                                 "--address", closed])
    line = _one_line_error(result)
    assert says in line and "cannot reach" not in line


def test_submit_wait_shows_the_jobs_lines_not_the_job_servers_info_lines():
    from pipeline.submit import without_ray_info_lines

    chunk = ("2026-12-07 03:24:24,123\tINFO job_manager.py:531 -- Runtime env is setting up.\n"
             "labeled 2 images (0 errors, 0 ignored files, 0 already done) in 9.1 s\n"
             "2026-12-07 03:24:25,001\tWARNING worker.py:12 -- a warning stays\n"
             "INFO in the job's own words stays\n")
    assert without_ray_info_lines(chunk) == (
        "labeled 2 images (0 errors, 0 ignored files, 0 already done) in 9.1 s\n"
        "2026-12-07 03:24:25,001\tWARNING worker.py:12 -- a warning stays\n"
        "INFO in the job's own words stays\n")
