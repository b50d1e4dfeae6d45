"""What a job of millions needs: a listing that streams and is kept with the run, a done-set of hashes,
--dry-run, resumes across upgrades, refusals before listing, and storage calls that ride out throttling."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time

import pandas as pd
import pyarrow as pa
import pytest
from conftest import BUCKET
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.identity_set import IdentitySet, hash_identities

runner = CliRunner()


def _label(*args: str):
    return runner.invoke(app, ["label", *args, "--weights", "none", "--batch-size", "4"])


def test_identity_set_agrees_with_a_python_set():
    rng = random.Random(7)
    names = [f"s3://bucket/{rng.randrange(50_000):06d}.jpg" for _ in range(120_000)]
    ours, truth = IdentitySet(), set()
    for start in range(0, len(names), 7_001):  # uneven chunks: levels merge at odd sizes
        chunk = names[start:start + 7_001]
        fresh = ours.add_new(hash_identities(pa.array(chunk)))
        expected = []
        for name in chunk:
            expected.append(name not in truth)
            truth.add(name)
        assert fresh.tolist() == expected
    assert len(ours) == len(truth)
    probe = [f"s3://bucket/{i:06d}.jpg" for i in range(0, 60_000, 3)]
    assert ours.contains(hash_identities(pa.array(probe))).tolist() == [p in truth for p in probe]
    other = IdentitySet()
    other.add(hash_identities(pa.array(sorted(truth)[:1000])))
    assert ours.count_missing_from(other) == len(truth) - 1000
    assert ours.nbytes == 8 * len(truth)  # 8 bytes an identity, nothing per path string


def test_labeling_starts_on_the_first_listed_images_while_the_listing_goes_on(tmp_path):
    """The feed hands out what is listed so far: a listing still running (here: blocked) does not hold back
    the first wave, and what is committed already is never handed out."""
    from pipeline.label.todo import TodoFeed
    from pipeline.listing import ListedChunk, SourceListing

    release = threading.Event()

    class SlowListing(SourceListing):
        def chunks(self):
            yield ListedChunk(pa.array([f"/img/{i}.jpg" for i in range(1000)]), 3)
            release.wait(30)
            yield ListedChunk(pa.array([f"/img/{i}.jpg" for i in range(1000, 1500)]), 0)

    done = IdentitySet()
    done.add(hash_identities(pa.array([f"/img/{i}.jpg" for i in range(0, 1500, 2)])))  # evens are committed
    with TodoFeed(SlowListing("/img", "folder"), done) as feed:
        first = feed.take(10_000)
        assert not feed.finished and feed.listed == 1000 and feed.skipped == 500
        assert first.to_pylist() == [f"/img/{i}.jpg" for i in range(1, 1000, 2)]
        release.set()
        second = feed.take(10_000)
        assert second.to_pylist() == [f"/img/{i}.jpg" for i in range(1001, 1500, 2)]
        assert feed.take(10_000) is None
        assert (feed.listed, feed.ignored, feed.skipped, feed.todo) == (1500, 3, 750, 750)


def test_a_list_file_of_a_million_paths_is_listed_in_chunks_without_repeats(tmp_path):
    from pipeline.listing import CHUNK, open_listing

    listing = tmp_path / "million.txt"
    with open(listing, "w") as f:
        f.write("# comment\n")
        f.writelines(f"/data/cam{i % 13}/IMG_{i:07d}.jpg\n" for i in range(1_000_000))
        f.write("/data/cam0/IMG_0000000.jpg\nrelative/x.png\nnotes.txt\n")  # a repeat, a relative path, a non-image
    source = open_listing(str(listing))
    started = time.perf_counter()
    sizes, last = [], None
    for chunk in source.chunks():
        sizes.append(len(chunk.paths))
        last = chunk.paths
    assert sum(sizes) == 1_000_001 and max(sizes) <= CHUNK
    assert (source.repeats, source.ignored) == (1, 1)
    assert last.to_pylist()[-1] == str(tmp_path / "relative" / "x.png")
    assert time.perf_counter() - started < 60


@pytest.mark.slow
def test_resume_reuses_the_recorded_listing_and_relist_finds_new_and_removed_images(photo_dir, photos, tmp_path,
                                                                                       local_ray):
    out = tmp_path / "out"
    first = _label(str(photo_dir), str(out))
    assert first.exit_code == 0, first.output
    assert (out / "_pipeline_listing" / "_complete.json").exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(("_", "part-"))) == []
    shutil.copy(photos["coffee"], photo_dir / "coffee-again.png")
    (photo_dir / "rocket.jpg").unlink()

    reused = _label(str(photo_dir), str(out), "--resume")
    assert reused.exit_code == 0, reused.output
    assert "reusing the listing recorded in OUTPUT" in reused.output
    assert "4 images listed" in reused.output and "0 to label" in reused.output
    assert len(pd.read_parquet(out)) == 4

    relisted = _label(str(photo_dir), str(out), "--resume", "--relist")
    assert relisted.exit_code == 0, relisted.output
    assert "1 to label" in relisted.output
    assert "1 image in OUTPUT is no longer in SOURCE" in relisted.output
    frame = pd.read_parquet(out)
    assert len(frame) == 5 and frame["path"].is_unique
    assert any(p.endswith("coffee-again.png") for p in frame["path"])


def test_dry_run_counts_without_writing_or_starting_ray(photo_dir, tmp_path, monkeypatch):
    import pipeline.label.job as job

    def no_ray(*args, **kwargs):
        raise AssertionError("a dry run started Ray")

    monkeypatch.setattr(job, "ray_session", no_ray)
    out = tmp_path / "out"
    dry = _label(str(photo_dir), str(out), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "dry run: 4 images listed (0 other files ignored), 0 already done, 4 left to label" in dry.output
    assert not out.exists()


@pytest.mark.slow
def test_dry_run_and_resume_after_a_partial_run_and_an_upgrade(photo_dir, tmp_path, local_ray):
    out = tmp_path / "out"
    assert _label(str(photo_dir), str(out), "--limit", "2").exit_code == 0
    manifest = json.loads((out / "_pipeline_manifest.json").read_text())
    manifest["package_version"] = "0.0.1"  # written by an older release
    (out / "_pipeline_manifest.json").write_text(json.dumps(manifest))

    dry = _label(str(photo_dir), str(out), "--resume", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "4 images listed" in dry.output and "2 already done, 2 left to label" in dry.output

    resumed = _label(str(photo_dir), str(out), "--resume")
    assert resumed.exit_code == 0, resumed.output  # an upgrade between a run and its resume is no refusal
    assert "2 already in OUTPUT, 2 to label" in resumed.output
    frame = pd.read_parquet(out)
    assert len(frame) == 4 and frame["path"].is_unique
    assert json.loads((out / "_pipeline_manifest.json").read_text())["package_version"] != "0.0.1"


@pytest.mark.slow
def test_a_list_file_naming_an_image_twice_labels_it_once(photo_dir, tmp_path, local_ray):
    listing = tmp_path / "list.txt"
    coffee = photo_dir / "coffee.png"
    listing.write_text(f"{coffee}\n{photo_dir}/./coffee.png\n{photo_dir / 'rocket.jpg'}\n")
    result = _label(str(listing), str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(tmp_path / "out")) == 2


def test_output_refusals_come_before_a_bucket_is_listed(s3_behind_proxy, photos, tmp_path):
    direct, proxy, options = s3_behind_proxy
    direct.put_file(str(photos["coffee"]), f"{BUCKET}/early/coffee.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "someone-elses.csv").write_text("a\n1\n")
    proxy.seen.clear()
    refused = _label(f"s3://{BUCKET}/early", str(out), "--storage-options", json.dumps(options))
    assert refused.exit_code == 2 and "is not empty" in refused.output, refused.output
    assert proxy.seen == []  # not one request to SOURCE: not the listing, not even its existence check


@pytest.mark.slow
def test_a_throttled_listing_is_ridden_out_and_a_long_outage_is_one_line(s3_behind_proxy, photos, tmp_path,
                                                                          local_ray):
    direct, proxy, options = s3_behind_proxy
    for name in ("coffee", "chelsea"):
        direct.put_file(str(photos[name]), f"{BUCKET}/throttled/{name}.png")
    source = f"s3://{BUCKET}/throttled"
    # The module's Ray started before the S3 fixture set its fake credentials: the workers get them here.
    args = ["--storage-options", json.dumps({**options, "key": "testing", "secret": "testing"})]

    proxy.outage(2.0)  # SlowDown for everything, the existence check and the LISTs included
    ridden = _label(source, str(tmp_path / "a"), *args)
    proxy.heal()
    assert ridden.exit_code == 0, ridden.output
    assert proxy.refused > 0 and len(pd.read_parquet(tmp_path / "a")) == 2

    proxy.outage(600)
    try:
        failed = _label(source, str(tmp_path / "b"), *args, "--read-retries", "1")
    finally:
        proxy.heal()
    assert failed.exit_code == 1, failed.output
    assert "Traceback" not in failed.output
    line = [ln for ln in failed.output.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and f"s3://{BUCKET}" in line[0] and "failed after 1 retries" in line[0], failed.output
    assert "--resume" in line[0]
