"""The ``pipeline`` command line: parses arguments, calls the library, prints."""

from pipeline.cli import label, models  # noqa: F401  (registers commands)
from pipeline.cli import submit  # noqa: F401
from pipeline.cli import finetune  # noqa: F401
from pipeline.cli import report  # noqa: F401
from pipeline.cli import evaluate  # noqa: F401
from pipeline.cli.app import app


def main() -> None:
    from pipeline.console_noise import filtered_console
    from pipeline.tensorflow_env import apply_tensorflow_defaults

    apply_tensorflow_defaults()  # before the filter reads TF_CPP_MIN_LOG_LEVEL, and before any TensorFlow import
    with filtered_console():  # every command's own TensorFlow import and Ray start, in this process
        app()


__all__ = ["app", "main"]
