"""The user's first commands: `pipeline models` and `pipeline classify`, with their exit codes."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def test_models_lists_registry_with_offline_default():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["name", "input", "preprocessing"]
    lite0 = next(line for line in lines if line.startswith("efficientnet_lite0"))
    assert "(default)" in lite0 and "224x224" in lite0 and "offline (installed)" in lite0
    inception = next(line for line in lines if line.startswith("inception_v3"))
    assert "299x299" in inception and "tf (scaled to [-1, 1])" in inception


def test_models_filter():
    result = runner.invoke(app, ["models", "resnet*_v2"])
    assert result.exit_code == 0
    assert len(result.output.splitlines()) == 4
    assert runner.invoke(app, ["models", "nothing*"]).exit_code == 2


def test_classify_prints_table(photos):
    result = runner.invoke(app, ["classify", str(photos["chelsea"]), str(photos["coffee"]), "--top-k", "3"])
    assert result.exit_code == 0, result.output
    assert "1. Egyptian cat" in result.output
    assert "1. espresso" in result.output
    assert result.output.count("(class ") == 6


def test_classify_unknown_model_suggests(photos):
    result = runner.invoke(app, ["classify", str(photos["chelsea"]), "--model", "resnet5"])
    assert result.exit_code == 2
    assert "did you mean resnet50" in result.output


def test_classify_refuses_a_missing_file_and_makes_a_broken_one_an_error_row(photos, tmp_path):
    missing = runner.invoke(app, ["classify", str(photos["coffee"]), str(tmp_path / "gone.jpg")])
    assert missing.exit_code == 2 and f"not found: {tmp_path / 'gone.jpg'}; nothing was classified" in missing.output
    broken = tmp_path / "broken.png"
    broken.write_bytes(photos["coffee"].read_bytes()[:200])
    result = runner.invoke(app, ["classify", str(photos["coffee"]), str(broken)])
    assert result.exit_code == 0
    assert "espresso" in result.output and "error: " in result.output
    only_broken = runner.invoke(app, ["classify", str(broken)])
    assert only_broken.exit_code == 1


def test_a_failed_imagenet_download_exits_2_without_traceback(photos, no_download_env):
    # A real process, as a user runs it: no traceback, one actionable line, exit code 2.
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "classify", str(photos["chelsea"]), "--model", "mobilenet_v2"],
        capture_output=True, text=True, timeout=300, env=no_download_env,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "could not download the ImageNet weights of mobilenet_v2" in proc.stderr
    assert "--weights none" in proc.stderr


def test_unreadable_weights_exit_2(photos, tmp_path):
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not hdf5")
    result = runner.invoke(app, ["classify", str(photos["chelsea"]), "--weights", str(bad)])
    assert result.exit_code == 2
    assert "does not fit model 'efficientnet_lite0'" in result.output
