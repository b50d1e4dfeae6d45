"""Cloud storage for real: images, weights and results on an S3 server on loopback (moto)."""

from __future__ import annotations

import json
import socket

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(monkeypatch_module):
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch_module.setenv(key, value)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("photos-bucket")
    return fs


@pytest.mark.slow
def test_label_from_s3_to_s3_with_weights_from_s3(s3, s3_endpoint, photos, lite0, tmp_path):
    for name, path in photos.items():
        s3.put_file(str(path), f"photos-bucket/in/{name}{path.suffix}")
    s3.pipe_file("photos-bucket/in/broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    s3.pipe_file("photos-bucket/in/manifest.json", b"{}")
    weights = tmp_path / "lite0.weights.h5"
    lite0.keras_model.save_weights(str(weights))
    s3.put_file(str(weights), "photos-bucket/models/lite0.weights.h5")
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}

    result = runner.invoke(app, [
        "label", "s3://photos-bucket/in", "s3://photos-bucket/out",
        "--weights", "s3://photos-bucket/models/lite0.weights.h5",
        "--storage-options", json.dumps(options), "--batch-size", "4",
    ])
    assert result.exit_code == 0, result.output
    assert "labeled 5 images (1 error, 1 ignored file" in result.output
    assert s3.glob("photos-bucket/out/part-*.parquet")
    frame = pd.read_parquet("s3://photos-bucket/out", storage_options=options)
    assert len(frame) == 5 and frame["path"].is_unique
    assert all(p.startswith("s3://photos-bucket/in/") for p in frame["path"])
    row = frame.set_index("path").loc["s3://photos-bucket/in/coffee.png"]
    assert row["label"] == "espresso"
    cat = frame.set_index("path").loc["s3://photos-bucket/in/chelsea.png"]
    assert cat["label"] in {"tabby", "tiger cat", "Egyptian cat"}
    assert frame.set_index("path").loc["s3://photos-bucket/in/broken.jpg", "error"]

    other_weights = runner.invoke(app, ["label", "s3://photos-bucket/in", "s3://photos-bucket/out", "--resume",
                                        "--storage-options", json.dumps(options)])
    assert other_weights.exit_code == 2
    assert "weights: OUTPUT has 's3://photos-bucket/models/lite0.weights.h5', this run has 'imagenet'" in (
        other_weights.output)
    resumed = runner.invoke(app, ["label", "s3://photos-bucket/in", "s3://photos-bucket/out", "--resume",
                                  "--weights", "s3://photos-bucket/models/lite0.weights.h5",
                                  "--storage-options", json.dumps(options)])
    assert resumed.exit_code == 0 and "labeled 0 images" in resumed.output
    assert s3.exists("photos-bucket/out/_pipeline_manifest.json")
    assert not s3.exists("photos-bucket/out/_pipeline_lease.json")  # released
    shown = runner.invoke(app, ["show", "s3://photos-bucket/out", "--storage-options", json.dumps(options)])
    assert shown.exit_code == 0 and shown.output.startswith("5 rows, 1 error")
