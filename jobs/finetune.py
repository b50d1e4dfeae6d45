"""Ray job entry point for fine-tuning: ``ray job submit -- python jobs/finetune.py DATA OUTPUT [options]``.

Takes exactly the options of ``pipeline finetune`` (same parser), so cluster configs cannot drift.
"""

import sys

from pipeline.cli import app

if __name__ == "__main__":
    app(["finetune", *sys.argv[1:]], prog_name="jobs/finetune.py")
