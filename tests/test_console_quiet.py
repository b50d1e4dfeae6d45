"""What a user sees on a CPU machine, in fresh processes of the real command: no TensorFlow, absl or CUDA
start-up lines without --verbose, `pipeline models` without TensorFlow, and `classify` checking its paths
before TensorFlow loads."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from pipeline.classification import expand_inputs
from pipeline.errors import UserError

NOISE = re.compile(r"absl|cuda|cuInit|E0000|W0000|I0000")
# Runs the command as `pipeline` does, then says which heavy modules it imported.
IMPORTS = """
import sys
from pipeline.cli import main
try:
    main()
finally:
    sys.stdout.flush()
    print("imported:", *[name for name in ("tensorflow", "keras", "ray") if name in sys.modules], file=sys.stderr)
"""


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", IMPORTS, *args], capture_output=True, text=True, timeout=timeout)


def _quiet(stderr: str) -> bool:
    return not [line for line in stderr.splitlines() if NOISE.search(line)]


def test_models_lists_the_registry_without_tensorflow():
    result = _run("models")
    assert result.returncode == 0, result.stderr
    assert "efficientnet_lite0 (default)" in result.stdout and "caffe (BGR, ImageNet mean subtracted)" in result.stdout
    assert result.stderr.strip() == "imported:", result.stderr


def test_classify_refuses_a_missing_path_before_tensorflow(tmp_path, photos):
    missing = tmp_path / "nope.jpg"
    result = _run("classify", str(photos["chelsea"]), str(missing))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: not found: {missing}; nothing was classified", "imported:"]


@pytest.mark.slow
def test_classify_prints_labels_and_nothing_of_tensorflow(tmp_path, photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.png").write_bytes(photos["chelsea"].read_bytes())
    (folder / "notes.txt").write_text("not an image")
    result = _run("classify", str(folder), "--top-k", "1")
    assert result.returncode == 0, result.stderr
    assert f"{folder / 'cat.png'}\n  1. Egyptian cat" in result.stdout  # the folder's one image
    assert _quiet(result.stderr), result.stderr


@pytest.mark.slow
def test_label_prints_only_its_own_lines(tmp_path, photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.png").write_bytes(photos["chelsea"].read_bytes())
    result = _run("label", str(folder), str(tmp_path / "out"), "--weights", "imagenet")
    assert result.returncode == 0, result.stderr
    assert "labeled 1 image" in result.stdout
    assert _quiet(result.stderr), result.stderr
    verbose = _run("label", str(folder), str(tmp_path / "out2"), "--verbose")
    assert verbose.returncode == 0 and "absl::InitializeLog" in verbose.stderr  # --verbose shows everything


def test_a_folder_past_the_classify_limit_points_to_label(tmp_path, photos):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(photos["chelsea"].read_bytes())
    assert len(expand_inputs([str(tmp_path)], max_images=3)) == 3
    with pytest.raises(UserError, match=r"past 2: .* 'pipeline label .* OUTPUT'"):
        expand_inputs([str(tmp_path)], max_images=2)
    with pytest.raises(UserError, match="holds no images"):
        expand_inputs([str(tmp_path / "empty")] if (tmp_path / "empty").mkdir() is None else [])


def _commands(group, path=()):
    for name, command in group.commands.items():
        yield (*path, name)
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))


def test_help_names_values_as_click_does_never_by_python_type():
    import typer
    from typer.testing import CliRunner

    from pipeline.cli import app

    runner = CliRunner()
    commands = [(), *_commands(typer.main.get_command(app))]
    assert ("submit", "label") in commands and ("jobs", "logs") in commands
    for command in commands:
        result = runner.invoke(app, [*command, "--help"], terminal_width=200)
        assert result.exit_code == 0, (command, result.output)
        assert not re.search(r"<(str|int|float|bool|list)[^>]*>", result.output), (command, result.output)
        assert not re.search(r"Usage: [^\n]*\{", result.output), (command, result.output)
    label = runner.invoke(app, ["label", "--help"], terminal_width=200).output
    assert "Usage: pipeline label [OPTIONS] SOURCE OUTPUT" in label
    assert re.search(r"--top-k +INTEGER \[x>=1\]", label) and re.search(r"--resize +\[squash\|center-crop\]", label)
    assert re.search(r"--resume +Continue", label)  # a flag takes no value
