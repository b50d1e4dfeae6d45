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
GET_TIMEOUT = 10.0  # seconds the driver waits for the relay's answer before trying again
SAY_TIMEOUT = 5.0  # seconds a worker waits for the relay to hold its line


@ray.remote(num_cpus=0, max_restarts=0)
class ProgressRelay:
    """Holds every line the workers said (one per epoch or so: a few kilobytes) until the job ends.

    The driver asks for the lines after the ones it has printed, so an answer lost to a timeout is asked
    for again, not lost.
    """

    def __init__(self) -> None:
        self._lines: list[str] = []

    def say(self, line: str) -> None:
        self._lines.append(line)

    def since(self, printed: int) -> list[str]:
        return self._lines[printed:]


@contextlib.contextmanager
def relayed_progress(progress: Callable[[str], None]) -> Iterator["ray.actor.ActorHandle"]:
    """A relay whose lines reach ``progress`` (on this process's console) within ``POLL_SECONDS``.

    Yields the actor handle to pass to the workers; every line a worker said before the block ends is
    printed (a worker's ``say`` returns once the relay holds the line).
    """
    relay = ProgressRelay.remote()
    printed = 0
    done = threading.Event()
    lock = threading.Lock()

    def print_new() -> None:
        nonlocal printed
        with lock:
            try:  # the relay is only progress: never fail a job over it
                lines = ray.get(relay.since.remote(printed), timeout=GET_TIMEOUT)
            except Exception:
                return  # asked for again at the next poll, or by the last call after the block
            for line in lines:
                printed += 1
                # One line the console could not take must not cost the lines after it: the last call,
                # after the block ends, gets no second chance to print them.
                with contextlib.suppress(Exception):
                    progress(line)

    def pump() -> None:
        while not done.wait(POLL_SECONDS):
            print_new()

    thread = threading.Thread(target=pump, name="progress-relay", daemon=True)
    thread.start()
    try:
        yield relay
    finally:
        done.set()
        thread.join(GET_TIMEOUT + 1)
        print_new()
        with contextlib.suppress(Exception):
            ray.kill(relay)


def say(relay, line: str) -> None:
    """On a worker: send ``line`` to the driver's console; print it when there is no relay.

    Waits (at most ``SAY_TIMEOUT``) until the relay holds the line, so a line said just before a worker
    ends is not lost; a relay that does not answer costs the worker that wait, never the training.
    """
    if relay is None:
        print(line, flush=True)
        return
    with contextlib.suppress(Exception):
        ray.get(relay.say.remote(line), timeout=SAY_TIMEOUT)
