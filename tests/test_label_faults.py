"""Failures a long job meets: the driver killed mid-run, a predictor actor killed mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from pipeline.plural import plural

N_COPIES = 20  # x 4 photos = 80 images: long enough to kill mid-way, short enough for CI


@pytest.fixture()
def many_photos(photo_copies) -> Path:
    return photo_copies(N_COPIES)


def _start(source: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline", "label", str(source), str(out),
           "--batch-size", "2", "--batches-per-task", "1", "--rows-per-file", "2", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)


def _wait_for_parts(out: Path, count: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(out.glob("part-*.parquet"))) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"job ended before writing {count} parts:\n{proc.stdout.read()}")
        time.sleep(0.2)
    pytest.fail("no part file appeared in time")


def _kill_session(proc: subprocess.Popen) -> None:
    """Remove what a killed driver leaves behind (its local Ray's helper processes)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _check_exactly_once(out: Path, source: Path) -> pd.DataFrame:
    frame = pd.read_parquet(out)  # every file readable
    expected = {str(p) for p in source.iterdir()}
    assert frame["path"].is_unique, "a path was written twice"
    assert set(frame["path"]) == expected
    assert frame["error"].isna().all()
    return frame


@pytest.mark.slow
def test_resume_after_driver_killed_is_exactly_once(many_photos, tmp_path):
    out = tmp_path / "out"
    proc = _start(many_photos, out)
    try:
        _wait_for_parts(out, 2, proc)
        proc.send_signal(signal.SIGKILL)  # kill -9 of the driver only
        proc.wait(30)
    finally:
        _kill_session(proc)
    written_before = len(pd.read_parquet(out)) if list(out.glob("part-*")) else 0
    assert 0 < written_before < 4 * N_COPIES, f"{written_before} rows before the kill"
    # kill -9 left the lease behind with a fresh heartbeat; the user knows that run is dead.
    resumed = subprocess.run([sys.executable, "-m", "pipeline", "label", str(many_photos), str(out),
                              "--resume", "--force-unlock", "--batch-size", "8"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f":{proc.pid} since" in resumed.stderr  # took over the killed run's lease
    done_now = 4 * N_COPIES - written_before
    assert (f"labeled {plural(done_now, 'image')} (0 errors, 0 ignored files, {written_before:,} already done)"
            in resumed.stdout)
    frame = _check_exactly_once(out, many_photos)
    cats = frame[frame["path"].str.endswith("chelsea.png")]
    assert cats["label"].isin({"tabby", "tiger cat", "Egyptian cat"}).all()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def _predictor_processes(driver: subprocess.Popen) -> list[psutil.Process]:
    """The predictor actors of this driver's own local Ray (never those of a job another test runs beside it)."""
    found = []
    for p in psutil.Process(driver.pid).children(recursive=True):
        try:
            cmdline = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "MapWorker" in cmdline and "Predictor" in cmdline:
            found.append(p)
    return found


@pytest.mark.slow
def test_killed_actor_is_replaced_and_output_stays_exactly_once(many_photos, tmp_path):
    out = tmp_path / "out"
    proc = _start(many_photos, out)
    try:
        _wait_for_parts(out, 1, proc)
        victims = _predictor_processes(proc)
        assert victims, "no predictor actor process found"
        for victim in victims:
            victim.kill()  # kill -9 of the actor's process
        output, _ = proc.communicate(timeout=600)
    finally:
        _kill_session(proc)
    assert proc.returncode == 0, output[-3000:]
    assert f"labeled {4 * N_COPIES} images (0 errors" in output
    _check_exactly_once(out, many_photos)
