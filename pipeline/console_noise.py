"""Keep Ray's and TensorFlow's known, harmless start-up lines off the console; Ray's log files keep Ray's.

Ray's C++ core writes each error-level line to its log file and, again, straight to file descriptor 2. No
Ray setting lowers the console copy alone: ``RAY_BACKEND_LOG_LEVEL`` also empties the log file. Ray Data
2.60 passes every actor pool's DataContext and transform to the actors as object refs, with
``max_restarts=-1``, so the driver prints "Actor ... has constructor arguments in the object store and
max_restarts > 0" (ray#53727, ray#57733) for every predictor actor of every labeling job. The user did
nothing to cause it and can change nothing about it, yet it reads like a failure on the first screen of
the demo.

TensorFlow 2.21 logs through absl before absl is initialised, and such lines ignore TF_CPP_MIN_LOG_LEVEL:
``import tensorflow`` prints "All log messages before absl::InitializeLog() ..." and two INFO lines (oneDNN,
"Could not find cuda drivers") on every CPU machine, and the first op an ERROR line ("failed call to
cuInit"). ``TENSORFLOW_NOISE`` drops what TF_CPP_MIN_LOG_LEVEL says to drop, as TensorFlow's own logging
would, and the CUDA start-up errors of a machine with no GPU (or with CUDA plugins registered twice), which
say nothing a user can act on. The ``pipeline`` command filters its whole process so (``filtered_console``).

``without_known_noise`` routes fd 2 through a pipe. A reader thread drops the lines that match
``KNOWN_NOISE`` and passes every other byte on unchanged. Python's own ``sys.stderr`` (the progress line)
keeps writing to the console directly, so it still sees a terminal when there is one. ``--verbose`` turns
it off (``show_everything``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import select
import sys
import threading
from typing import Iterator, TextIO

KNOWN_NOISE: tuple[re.Pattern[bytes], ...] = (
    re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object "
               rb"store and max_restarts > 0"),
)



def _absl_levels(min_level: int) -> bytes:
    """The absl severity letters TF_CPP_MIN_LOG_LEVEL=min_level hides (1: I, 2: I and W, 3: I, W and E)."""
    return b"IWE"[:max(0, min(min_level, 3))]


def tensorflow_noise(environ: dict[str, str] | None = None) -> tuple[re.Pattern[bytes], ...]:
    """TensorFlow's start-up lines to drop under this environment's TF_CPP_MIN_LOG_LEVEL (see the docstring)."""
    env = os.environ if environ is None else environ
    try:
        level = int(env.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        level = 0
    patterns = [
        # CUDA libraries present, no GPU or driver: harmless on a CPU machine, at every level.
        re.compile(rb"^E\d{4} [\d:. ]+\d+ cuda_platform\.cc:\d+\] failed call to cuInit"),
        re.compile(rb"^E\d{4} [\d:. ]+\d+ cuda_(dnn|fft|blas)\.cc:\d+\] Unable to register cu\w+ factory"),
        re.compile(rb"^E\d{4} [\d:. ]+\d+ computation_placer\.cc:\d+\] computation placer already registered"),
    ]
    hidden = _absl_levels(level)
    if hidden:
        patterns.append(re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called"))
        patterns.append(re.compile(rb"^[" + hidden + rb"]\d{4} [\d:. ]+\d+ [\w.-]+\.(cc|h):\d+\] "))
    return tuple(patterns)


_show_everything = threading.Event()


def show_everything() -> None:
    """``--verbose``: from now on every filter of this process passes every line."""
    _show_everything.set()


# A line a writer left unfinished (no newline yet) is passed on after this long. Ray writes each line in
# one call, so only other writers' partial lines (a C library's progress dots) wait, and never for long.
PARTIAL_LINE_SECONDS = 0.1
PARTIAL_LINE_BYTES = 8192  # nor does one that keeps growing without a newline (a bar redrawn with \r)
DRAIN_SECONDS = 5.0  # at the end, how long the reader may take to pass on what is still in the pipe


def is_known_noise(line: bytes, patterns: tuple[re.Pattern[bytes], ...] = KNOWN_NOISE) -> bool:
    return not _show_everything.is_set() and any(pattern.search(line) for pattern in patterns)


def _write_all(fd: int, data: bytes) -> None:
    """Pass ``data`` on; a console that went away costs the data, never the reader (writers would block)."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def _forward(read_end: int, console: int, patterns: tuple[re.Pattern[bytes], ...] = KNOWN_NOISE) -> None:
    pending = b""
    while True:
        if pending and not select.select([read_end], [], [], PARTIAL_LINE_SECONDS)[0]:
            _write_all(console, pending)
            pending = b""
            continue
        try:
            chunk = os.read(read_end, 65536)
        except OSError:
            chunk = b""
        if not chunk:  # every write end is closed: the job is over
            _write_all(console, pending)
            return
        *lines, pending = (pending + chunk).split(b"\n")
        _write_all(console, b"".join(line + b"\n" for line in lines if not is_known_noise(line, patterns)))
        if len(pending) > PARTIAL_LINE_BYTES:
            _write_all(console, pending)
            pending = b""


def _console_stream(console: int, like: TextIO) -> TextIO | None:
    """A text stream on ``console`` like ``like`` (encoding, errors, buffering); None if ``like`` writes elsewhere.

    pytest's capture and notebooks give Python a stream that is not fd 2: it is left alone.
    """
    try:
        if like.fileno() != 2:
            return None
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None
    return io.TextIOWrapper(io.FileIO(os.dup(console), "w"), encoding=getattr(like, "encoding", None) or "utf-8",
                            errors=getattr(like, "errors", None) or "backslashreplace",
                            line_buffering=bool(getattr(like, "line_buffering", True)), write_through=True)


@contextlib.contextmanager
def without_known_noise(patterns: tuple[re.Pattern[bytes], ...] = KNOWN_NOISE) -> Iterator[None]:
    """Filter ``patterns`` out of fd 2 for the length of the block (see the module docstring); a no-op where
    there is no fd 2."""
    try:
        sys.stderr.flush()
        console: int | None = os.dup(2)
    except (OSError, ValueError, AttributeError):
        console = None
    if console is None:
        yield
        return
    python_stderr = sys.stderr
    direct = _console_stream(console, python_stderr)
    read_end, write_end = os.pipe()
    reader = threading.Thread(target=_forward, args=(read_end, console, patterns), name="console-noise-filter",
                              daemon=True)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    if direct is not None:
        sys.stderr = direct
    try:
        yield
    finally:
        if direct is not None:
            sys.stderr = python_stderr
            with contextlib.suppress(Exception):
                direct.flush()
                direct.close()
        os.dup2(console, 2)  # closes the pipe's last write end: the reader passes on the rest and stops
        reader.join(DRAIN_SECONDS)
        if not reader.is_alive():  # else a process this block started still holds the pipe: leave both open
            os.close(read_end)
            os.close(console)


def filtered_console() -> contextlib.AbstractContextManager[None]:
    """Ray's and TensorFlow's known noise kept off fd 2: what the ``pipeline`` command runs in."""
    return without_known_noise(KNOWN_NOISE + tensorflow_noise())
