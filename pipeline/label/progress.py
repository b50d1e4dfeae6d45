"""One progress line a person can read, counted in images, with rate and ETA.

On a terminal the line is redrawn in place a few times a second; in a log (a
submitted job, CI, a pipe) a new line is printed every ``log_every`` seconds, so
the log stays short. The rate is the steady rate since the first result arrived:
start-up (Ray, TensorFlow, model load) is reported apart, not averaged in.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from pipeline.plural import plural


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


MIN_STEADY_SECONDS = 1.0  # a steady rate needs results spread over at least this long


class Progress:
    """Tracks rows as they arrive and prints the progress line."""

    def __init__(self, total: int | None, stream: TextIO | None = None, enabled: bool = True,
                 log_every: float = 10.0):
        self.total = total or 0  # images to label; while the listing runs, those found so far
        self.final = total is not None  # False while the listing runs: the total is still growing
        self.listed = 0  # images listed so far (said while the listing runs)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interactive = enabled and self.stream.isatty()
        self.log_every = log_every
        self.started = time.monotonic()
        self.first_result: float | None = None  # when the first rows arrived
        self.first_rows = 0  # rows in that first arrival (they did not take steady time)
        self.last_result: float | None = None  # when the latest rows arrived
        self.done = 0
        self.errors = 0
        self._last_print = 0.0

    @property
    def startup_seconds(self) -> float:
        return (self.first_result or time.monotonic()) - self.started

    def steady_rate(self, now: float | None = None) -> float:
        """Images/s from the first result to ``now`` (default: the latest result); 0 until measurable.

        Results can arrive in bursts (several blocks finishing together): rows spread over less than
        ``MIN_STEADY_SECONDS`` say nothing about a rate, and dividing by milliseconds would print a
        rate of tens of thousands of images/s.
        """
        if self.first_result is None:
            return 0.0
        elapsed = (now or self.last_result) - self.first_result
        if elapsed < MIN_STEADY_SECONDS or self.done <= self.first_rows:
            return 0.0
        return (self.done - self.first_rows) / elapsed

    def update(self, rows: int, errors: int) -> None:
        now = time.monotonic()
        if self.first_result is None:
            self.first_result, self.first_rows = now, rows
        self.done += rows
        self.errors += errors
        self.last_result = now
        measurable = self.interactive or self.steady_rate(now) > 0  # a log line without a rate says nothing
        if self.enabled and measurable and now - self._last_print >= (0.25 if self.interactive else self.log_every):
            self._last_print = now
            self._print(self.line(now))

    def set_total(self, total: int, final: bool, listed: int = 0) -> None:
        """The images to label as known now: ``final`` once the listing has ended (and without the images held
        back by transient errors, so the line ends at 100%)."""
        self.total, self.final, self.listed = max(total, self.done), final, listed

    def clear_line(self) -> None:
        """End a redrawn line, so a message printed next starts on its own line."""
        if self.interactive and self._last_print:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        rate = self.steady_rate(now)
        if not self.final:
            return (f"{plural(self.done, 'image')} labeled, {self.listed:,} listed so far (still listing), "
                    f"{rate:.1f} images/s, {plural(self.errors, 'error')}")
        share = self.done / self.total if self.total else 1.0
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        return (f"{self.done:,}/{self.total:,} images ({share:.0%}), {rate:.1f} images/s, ETA {eta}, "
                f"{plural(self.errors, 'error')}")

    def close(self) -> None:
        if self.interactive and self._last_print:
            self.stream.write("\n")
            self.stream.flush()

    def _print(self, line: str) -> None:
        if self.interactive:
            self.stream.write(f"\r{line}\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
