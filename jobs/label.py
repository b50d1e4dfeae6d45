"""Ray job entry point for labeling: ``ray job submit -- python jobs/label.py SOURCE OUTPUT [options]``.

Takes exactly the options of ``pipeline label`` (same parser), so cluster configs cannot drift.
"""

import sys

from pipeline.cli import app

if __name__ == "__main__":
    app(["label", *sys.argv[1:]], prog_name="jobs/label.py")
