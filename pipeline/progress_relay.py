"""Our own progress lines from Ray workers to the driver's console, and nothing else they print.

A quiet job (no ``--verbose``) does not forward the workers' output: that output is TensorFlow's and
Ray's start-up and collective-op chatter, Ray Data's execution logs and Ray Train's status lines, a few
hundred lines for a short fine-tuning run. The lines a person wants (one per epoch, and why a stage ended)
travel instead through a small actor that the driver polls and prints.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import ray

POLL_SECONDS = 0.5


@ray.remote(num_cpus=0, max_restarts=0)
class ProgressRelay:
    """Holds the lines workers say until the driver takes them."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def say(self, line: str) -> None:
        self._lines.append(line)

    def take(self) -> list[str]:
        lines, self._lines = self._lines, []
        return lines


@contextlib.contextmanager
def relayed_progress(progress: Callable[[str], None]) -> Iterator["ray.actor.ActorHandle"]:
    """A relay whose lines reach ``progress`` (on this process's console) within ``POLL_SECONDS``.

    Yields the actor handle to pass to the workers; every line said before the block ends is printed.
    """
    relay = ProgressRelay.remote()
    done = threading.Event()

    def pump() -> None:
        while not done.wait(POLL_SECONDS):
            _print(relay, progress)

    thread = threading.Thread(target=pump, name="progress-relay", daemon=True)
    thread.start()
    try:
        yield relay
    finally:
        done.set()
        thread.join()
        with contextlib.suppress(Exception):  # the relay is only progress: never fail a job over it
            _print(relay, progress)
            ray.kill(relay)


def _print(relay, progress: Callable[[str], None]) -> None:
    with contextlib.suppress(ray.exceptions.RayError):
        for line in ray.get(relay.take.remote(), timeout=30):
            progress(line)


def say(relay, line: str) -> None:
    """On a worker: send ``line`` to the driver's console (fire and forget); print it when there is no relay."""
    if relay is None:
        print(line, flush=True)
    else:
        relay.say.remote(line)
