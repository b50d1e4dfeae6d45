"""`pipeline.label` and `pipeline.finetune` give their public names, and importing either loads no job."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = r'''
import json, sys
import pipeline.label, pipeline.finetune
before = sorted(m for m in ("pipeline.label.job", "pipeline.finetune.job", "ray.data", "tensorflow") if m in sys.modules)
from pipeline.finetune import FinetuneConfig, FinetuneSummary, run_finetune
from pipeline.label import LabelConfig, LabelSummary, run_label_job
from pipeline.finetune.job import run_finetune as finetune_home
from pipeline.label.job import run_label_job as label_home
print(json.dumps({"loaded_on_import": before, "same": run_finetune is finetune_home and run_label_job is label_home,
                  "config": FinetuneConfig.__module__}))
'''


def test_importing_the_packages_loads_no_job_and_the_names_are_the_jobs_own():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"loaded_on_import": [], "same": True, "config": "pipeline.finetune.job"}


@pytest.mark.parametrize("package", ["pipeline.label", "pipeline.finetune"])
def test_an_unknown_name_is_an_attribute_error(package):
    module = __import__(package, fromlist=["_"])
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'run'"):
        module.run
