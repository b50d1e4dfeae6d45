"""Keep Ray's known, harmless core warnings off the console while a job runs; Ray's log files keep them.

Ray's C++ core writes each error-level line to its log file and, again, straight to file descriptor 2. No
Ray setting lowers the console copy alone: ``RAY_BACKEND_LOG_LEVEL`` also empties the log file. Ray Data
2.60 passes every actor pool's DataContext and transform to the actors as object refs, with
``max_restarts=-1``, so the driver prints "Actor ... has constructor arguments in the object store and
max_restarts > 0" (ray#53727, ray#57733) for every predictor actor of every labeling job. The user did
nothing to cause it and can change nothing about it, yet it reads like a failure on the first screen of
the demo.

``without_known_noise`` routes fd 2 through a pipe. A reader thread drops the lines that match
``KNOWN_NOISE`` and passes every other byte on unchanged. Python's own ``sys.stderr`` (the progress line)
keeps writing to the console directly, so it still sees a terminal when there is one. ``--verbose`` does
not use it.
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

# A line a writer left unfinished (no newline yet) is passed on after this long. Ray writes each line in
# one call, so only other writers' partial lines (a C library's progress dots) wait, and never for long.
PARTIAL_LINE_SECONDS = 0.1
PARTIAL_LINE_BYTES = 8192  # nor does one that keeps growing without a newline (a bar redrawn with \r)
DRAIN_SECONDS = 5.0  # at the end, how long the reader may take to pass on what is still in the pipe


def is_known_noise(line: bytes) -> bool:
    return any(pattern.search(line) for pattern in KNOWN_NOISE)


def _write_all(fd: int, data: bytes) -> None:
    """Pass ``data`` on; a console that went away costs the data, never the reader (writers would block)."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def _forward(read_end: int, console: int) -> None:
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
        _write_all(console, b"".join(line + b"\n" for line in lines if not is_known_noise(line)))
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
def without_known_noise() -> Iterator[None]:
    """Filter fd 2 for the length of the block (see the module docstring); a no-op where there is no fd 2."""
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
    reader = threading.Thread(target=_forward, args=(read_end, console), name="console-noise-filter",
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
