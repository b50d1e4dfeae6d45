"""Importing pipeline leaves the user's process as it was; our own processes get their settings."""

from __future__ import annotations

import os
import subprocess
import sys

IMPORT_EVERYTHING = """
import os, cv2
threads, env = cv2.getNumThreads(), dict(os.environ)
import pipeline, pipeline.api, pipeline.images, pipeline.classification, pipeline.dataset_predictions
import pipeline.label.job, pipeline.finetune.job
assert cv2.getNumThreads() == threads, (threads, cv2.getNumThreads())
assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())
import numpy as np
from pipeline.label.feed import read_and_decode
read_and_decode({"path": np.array([], dtype=object)}, 32, {})  # what a decode task of ours runs
print(threads, cv2.getNumThreads())
"""

COMMAND_PROCESS = """
import os
from typer.testing import CliRunner
from pipeline.cli import app
assert "TF_CPU_ALLOCATOR_USE_BFC" not in os.environ
result = CliRunner().invoke(app, ["models"])
assert result.exit_code == 0, result.output
print(os.environ["TF_CPU_ALLOCATOR_USE_BFC"])
"""


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_importing_pipeline_changes_no_setting_of_the_process_and_a_decode_task_uses_one_opencv_thread():
    before, in_task = _run(IMPORT_EVERYTHING).split()
    assert int(before) > 1 or (os.cpu_count() or 1) == 1
    assert in_task == "1"  # OpenCV's pool would spend a core-ms an image more, on cores the predictors need


def test_a_pipeline_command_applies_the_tensorflow_defaults_to_its_own_process():
    assert _run(COMMAND_PROCESS) == "true"
