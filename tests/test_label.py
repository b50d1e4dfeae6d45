"""The labeling job end to end on an embedded local Ray: photos and broken files in, Parquet out."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}


pytestmark = pytest.mark.usefixtures("local_ray")  # one local Ray for the module (conftest)


@pytest.fixture()
def mixed_source(photo_dir, photos):
    """Real photos, a nested upper-case JPEG, broken images, and files that are not images at all."""
    (photo_dir / "nested" / "deeper").mkdir(parents=True)
    shutil.copy(photos["rocket"], photo_dir / "nested" / "deeper" / "ROCKET.JPG")
    (photo_dir / "zero.jpg").write_bytes(b"")
    data = photos["coffee"].read_bytes()
    (photo_dir / "truncated.png").write_bytes(data[: len(data) // 3])
    (photo_dir / "notes.png").write_text("this is not a picture\n" * 10)
    (photo_dir / "README.txt").write_text("ignored")
    (photo_dir / "nested" / "data.csv").write_text("a,b\n1,2\n")
    return photo_dir


def _label(*args: str):
    return runner.invoke(app, ["label", *args, "--batch-size", "4"])


@pytest.mark.slow
def test_labels_every_image_once_with_errors_as_rows(mixed_source, tmp_path):
    out = tmp_path / "out"
    result = _label(str(mixed_source), str(out))
    assert result.exit_code == 0, result.output
    assert "labeled 8 images (3 errors, 2 ignored files, 0 already done)" in result.output
    frame = pd.read_parquet(out)
    assert len(frame) == 8 and frame["path"].is_unique
    by_name = {p.rsplit("/", 1)[-1]: row for p, row in zip(frame["path"], frame.itertuples())}
    assert set(by_name) == {"chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "ROCKET.JPG",
                            "zero.jpg", "truncated.png", "notes.png"}
    assert by_name["chelsea.png"].label in CAT_CLASSES
    assert by_name["coffee.png"].label == "espresso"
    assert by_name["coffee.png"].top_ids[0] == 967 and len(by_name["coffee.png"].top_labels) == 5
    assert list(by_name["rocket.jpg"].top_ids) == list(by_name["ROCKET.JPG"].top_ids)
    assert by_name["zero.jpg"].error.startswith("empty file")
    assert by_name["truncated.png"].error.startswith("truncated or corrupt image")
    assert by_name["notes.png"].error.startswith("not an image")
    for name in ("zero.jpg", "truncated.png", "notes.png"):
        assert pd.isna(by_name[name].label) and pd.isna(by_name[name].score)
    assert frame["error"].isna().sum() == 5
    assert set(frame["model"]) == {"efficientnet_lite0"}
    schema = pq.read_schema(next(out.glob("part-*.parquet")))
    assert str(schema.field("score").type) == "float"
    assert str(schema.field("top_ids").type) == "list<element: int32>"
    assert str(schema.field("top_scores").type) == "list<element: float>"


@pytest.mark.slow
def test_refuses_non_empty_output_then_resume_does_no_work_and_overwrite_replaces(photo_dir, tmp_path):
    out = tmp_path / "out"
    assert _label(str(photo_dir), str(out)).exit_code == 0
    again = _label(str(photo_dir), str(out))
    assert again.exit_code == 2 and "--resume" in again.output and "--overwrite" in again.output
    resumed = _label(str(photo_dir), str(out), "--resume")
    assert resumed.exit_code == 0
    assert "labeled 0 images (0 errors, 0 ignored files, 4 already done)" in resumed.output
    overwritten = _label(str(photo_dir), str(out), "--overwrite", "--top-k", "2")
    assert overwritten.exit_code == 0
    frame = pd.read_parquet(out)
    assert len(frame) == 4 and frame["path"].is_unique
    assert frame["top_labels"].map(len).eq(2).all()


@pytest.mark.slow
def test_glob_list_files_and_limit(photo_dir, tmp_path):
    globbed = _label(str(photo_dir / "c*.png"), str(tmp_path / "glob"))
    assert globbed.exit_code == 0, globbed.output
    assert sorted(p.rsplit("/", 1)[-1] for p in pd.read_parquet(tmp_path / "glob")["path"]) == [
        "chelsea.png", "coffee.png"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two photos\n{photo_dir / 'coffee.png'}\n\n{photo_dir / 'rocket.jpg'}\n")
    assert _label(str(listing), str(tmp_path / "txt")).exit_code == 0
    assert len(pd.read_parquet(tmp_path / "txt")) == 2
    table = pd.DataFrame({"path": [str(p) for p in sorted(photo_dir.iterdir())]})
    table.to_parquet(tmp_path / "list.parquet")
    limited = _label(str(tmp_path / "list.parquet"), str(tmp_path / "pq"), "--limit", "3")
    assert limited.exit_code == 0
    assert len(pd.read_parquet(tmp_path / "pq")) == 3


@pytest.mark.slow
def test_list_file_entries_have_one_identity_with_folder_listings(photo_dir, tmp_path):
    """Relative entries resolve against the list file's folder; every spelling of a file is one image."""
    lists = photo_dir / "lists"
    lists.mkdir()
    (lists / "relative.txt").write_text("../coffee.png\n../chelsea.png\n./../coffee.png\n"
                                        f"{photo_dir}/./chelsea.png\n")
    out = tmp_path / "out"
    result = _label(str(lists / "relative.txt"), str(out))
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert sorted(frame["path"]) == [str(photo_dir / "chelsea.png"), str(photo_dir / "coffee.png")]
    assert frame["error"].isna().all()
    # The folder listing names the same two files the same way: resume sees them as done.
    resumed = _label(str(photo_dir), str(out), "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "labeled 2 images (0 errors, 1 ignored file, 2 already done)" in resumed.output
    assert len(pd.read_parquet(out)) == 4 and pd.read_parquet(out)["path"].is_unique


@pytest.mark.slow
def test_retry_errors_relabels_failed_rows_once_and_max_error_rate_stops_early(photo_dir, photos, tmp_path):
    data = photos["coffee"].read_bytes()
    (photo_dir / "late.png").write_bytes(data[: len(data) // 3])  # not fully uploaded yet
    out = tmp_path / "out"
    first = _label(str(photo_dir), str(out))
    assert "labeled 5 images (1 error" in first.output
    (photo_dir / "late.png").write_bytes(data)  # the upload finished
    plain = _label(str(photo_dir), str(out), "--resume")
    assert "labeled 0 images" in plain.output  # error rows count as answered...
    retried = _label(str(photo_dir), str(out), "--resume", "--retry-errors")
    assert retried.exit_code == 0, retried.output
    assert "labeled 1 image (0 errors, 0 ignored files, 4 already done)" in retried.output
    frame = pd.read_parquet(out)
    assert len(frame) == 5 and frame["path"].is_unique and frame["error"].isna().all()
    assert frame.set_index("path").loc[str(photo_dir / "late.png"), "label"] == "espresso"
    alone = _label(str(photo_dir), str(tmp_path / "x"), "--retry-errors")
    assert alone.exit_code == 2 and "pass it with --resume" in alone.output

    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(40):
        (broken / f"{i:02d}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    shutil.copy(photos["coffee"], broken / "ok.png")
    stopped = _label(str(broken), str(tmp_path / "stopped"), "--max-error-rate", "0.5")
    assert stopped.exit_code == 1 and "stopped early" in stopped.output and "--max-error-rate 0.5" in stopped.output
    bad_rate = _label(str(broken), str(tmp_path / "y"), "--max-error-rate", "1.5")
    assert bad_rate.exit_code == 2 and "--max-error-rate 1.5" in bad_rate.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/missing", "{tmp}/out"], "does not exist"),
        (["{tmp}/empty", "{tmp}/out"], "holds no images"),
        (["{photos}", "{tmp}/out", "--model", "resnet5"], "did you mean resnet50"),
        (["{photos}", "{tmp}/file.txt/out"], "is not writable"),
        (["{photos}", "{tmp}/out", "--concurrency", "3,1"], "MIN,MAX"),
        (["{photos}", "{tmp}/out", "--storage-options", "[1]"], "--storage-options must be a JSON object"),
    ],
)
def test_bad_input_exits_2_before_cluster_work(photo_dir, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    (tmp_path / "file.txt").write_text("x")
    filled = [a.format(tmp=tmp_path, photos=photo_dir) for a in args]
    result = _label(*filled)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.slow
def test_a_failed_imagenet_download_exits_2_before_cluster_work(photo_dir, tmp_path, no_download_env):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "label", str(photo_dir), str(tmp_path / "out"),
                           "--model", "mobilenet_v2"], capture_output=True, text=True, timeout=300,
                          env=no_download_env)
    assert proc.returncode == 2, proc.stderr
    assert "could not download the ImageNet weights" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_show_prints_counts_lowest_and_errors(mixed_source, tmp_path):
    out = tmp_path / "out"
    assert _label(str(mixed_source), str(out)).exit_code == 0
    shown = runner.invoke(app, ["show", str(out)])
    assert shown.exit_code == 0
    assert shown.output.startswith("8 rows, 3 errors")
    assert "espresso" in shown.output and "least confident:" in shown.output
    assert "zero.jpg: empty file" in shown.output
    assert "run manifest" in shown.output and "model: efficientnet_lite0" in shown.output
    assert "top_k: 5" in shown.output and "weights_digest: sha256:" in shown.output
    only_errors = runner.invoke(app, ["show", str(out), "--errors"])
    assert "label counts" not in only_errors.output and "notes.png: not an image" in only_errors.output
    espresso = runner.invoke(app, ["show", str(out), "--label", "espresso"])
    assert espresso.output.startswith("1 row, 0 errors")
    assert runner.invoke(app, ["show", str(tmp_path / "nothing")]).exit_code == 2


@pytest.mark.slow
def test_results_stream_back_one_task_at_a_time(photo_dir, tmp_path):
    """Each decode task and each actor call takes one input block, and its rows reach the driver when it ends:
    9 images in tasks of 4 come back as 4, 4 and 1 rows (evenly split blocks of 3 were bundled in twos)."""
    from pipeline.label.config import LabelConfig
    from pipeline.label.job import _prediction_stream, path_blocks
    from pipeline.models.resolved import resolve_model

    assert [len(b) for b in path_blocks([str(i) for i in range(9)], 4)] == [4, 4, 1]
    paths = sorted(str(p) for p in photo_dir.iterdir())
    todo = (paths * 3)[:9]
    config = LabelConfig(source=str(photo_dir), output=str(tmp_path / "out"), weights="none", batch_size=2,
                         batches_per_task=2, concurrency=(1, 1), progress=False)
    sizes = [table.num_rows for table in _prediction_stream(config, todo, resolve_model(config.model))]
    assert sorted(sizes) == [1, 4, 4]
