"""One read+decode path for labeling, fine-tuning and classify: concurrent object reads, retries, and
transient failures that never pass for a property of the image. Real S3 (moto) behind a latency proxy."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from typer.testing import CliRunner

import pipeline
import pipeline.fetch
from conftest import BUCKET
from pipeline.cli import app
from pipeline.fetch import fetch_and_decode
from pipeline.finetune.data import decode_batch

runner = CliRunner()


@pytest.fixture(scope="module")
def photos_on_s3(s3_behind_proxy, photos):
    """16 real photos under s3://BUCKET/fetch/, and the proxy slowed to 50 ms a request."""
    direct, proxy, options = s3_behind_proxy
    urls = []
    for i in range(4):
        for name, path in photos.items():
            direct.put_file(str(path), f"{BUCKET}/fetch/{i}_{name}{path.suffix}")
            urls.append(f"s3://{BUCKET}/fetch/{i}_{name}{path.suffix}")
    proxy.latency = 0.05
    yield urls, proxy, options
    proxy.latency = 0.0


def test_a_batch_is_fetched_concurrently_and_bytes_need_no_read(photos_on_s3, photos):
    from pipeline import storage

    urls, proxy, options = photos_on_s3
    storage.set_storage_options(options)
    proxy.reset_max_in_flight()
    fetched = fetch_and_decode([*urls, photos["coffee"].read_bytes()], 64)
    assert fetched.errors == [""] * 17 and not fetched.transient.any()
    assert proxy.max_in_flight >= 8  # one GET after another would never overlap
    assert np.array_equal(fetched.images[16], fetched.images[1])  # coffee, from bytes and from S3


def test_fine_tuning_decodes_concurrently_and_flags_an_outage_as_transient(photos_on_s3):
    urls, proxy, options = photos_on_s3
    missing = f"s3://{BUCKET}/fetch/missing.png"
    batch = {"path": np.array([*urls, missing], dtype=object), "label": np.zeros(17, np.int32)}
    proxy.reset_max_in_flight()
    decoded = decode_batch(batch, 32, options, retries=0)
    assert proxy.max_in_flight >= 8
    assert list(decoded["error"][:16]) == [""] * 16 and decoded["error"][16].startswith("not found")
    assert not decoded["transient"].any()  # a missing object is a property of the data set: skipped
    proxy.outage(600, only=f"/{BUCKET}/fetch/")
    try:
        failed = decode_batch(batch, 32, options, retries=0)
    finally:
        proxy.heal()
    assert failed["transient"].all()


def test_classify_reads_urls_concurrently(photos_on_s3):
    from pipeline import storage

    urls, proxy, options = photos_on_s3
    storage.set_storage_options(options)
    proxy.reset_max_in_flight()
    results = pipeline.classify([*urls, f"s3://{BUCKET}/fetch/missing.png"], top_k=1)
    assert proxy.max_in_flight >= 8
    assert [r.label for r in results[:4]] == [r.label for r in results[4:8]]  # the same photos again
    assert results[1].label == "espresso" and results[16].error.startswith("not found")


def test_errors_no_wait_can_fix_are_not_retried(tmp_path, monkeypatch):
    """A malformed URL or a missing file is an error row at once, never a 15 s retry loop or a transient."""
    monkeypatch.setattr(pipeline.fetch, "FIRST_RETRY_DELAY", 30.0)  # a retry round would show in the time
    started = time.monotonic()
    fetched = fetch_and_decode(["nosuchprotocol://bucket/a.jpg", str(tmp_path / "gone.jpg")], 32, retries=3)
    assert time.monotonic() - started < 10
    assert not fetched.transient.any()
    assert fetched.errors[0].startswith("unreadable: ValueError") and "nosuchprotocol" in fetched.errors[0]
    assert fetched.errors[1].startswith("not found")


@pytest.mark.slow
def test_fine_tuning_stops_when_storage_keeps_failing_and_trains_nothing(s3_behind_proxy, photos, tmp_path):
    """Training on whatever happened to arrive would change the data set behind the user's back."""
    direct, proxy, options = s3_behind_proxy
    for label in ("cat", "coffee"):
        for i in range(3):
            direct.put_file(str(photos["chelsea" if label == "cat" else "coffee"]), f"{BUCKET}/ft/{label}/{i}.png")
    output = tmp_path / "model"
    proxy.outage(600, only=f"/{BUCKET}/ft/")  # every image read fails; listing still works
    try:
        result = runner.invoke(app, ["finetune", f"s3://{BUCKET}/ft", str(output), "--workers", "1", "--epochs", "1",
                                     "--image-size", "32", "--read-retries", "0",
                                     "--storage-options", json.dumps(options)])
    finally:
        proxy.heal()
    assert result.exit_code == 1, result.output
    assert "6 images could not be read after retries" in result.output and "nothing was trained" in result.output
    assert not (output / "model.keras").exists()
