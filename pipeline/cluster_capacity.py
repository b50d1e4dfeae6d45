"""Wait for a Ray cluster to have what a job needs: capacity now is not what an autoscaling cluster can reach.

The shipped clusters start with no GPU workers and add them on demand, so a check of
``ray.cluster_resources()`` at start would refuse every GPU job. Instead: ask the autoscaler for the
job's bundles at once, and wait (bounded) for them to appear; a fixed-size cluster ignores the request
and ends in the same clear message when the wait is over.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from pipeline.errors import UserError

SCALE_UP_TIMEOUT_ENV = "PIPELINE_SCALE_UP_TIMEOUT"  # seconds a job on a cluster waits for it to grow
DEFAULT_SCALE_UP_TIMEOUT = 900.0  # a new GPU node pulls a multi-GB image and starts in minutes


def scale_up_timeout(address: str | None) -> float:
    """0 for the local Ray a job starts itself (it never grows); else $PIPELINE_SCALE_UP_TIMEOUT or 900 s."""
    if address is None and not os.environ.get("RAY_ADDRESS"):
        return 0.0
    text = os.environ.get(SCALE_UP_TIMEOUT_ENV, str(DEFAULT_SCALE_UP_TIMEOUT))
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{SCALE_UP_TIMEOUT_ENV}={text!r} should be a number of seconds") from None


def wait_for_capacity(shortfall: Callable[[], str | None], bundles: list[dict[str, float]], wait_seconds: float,
                      progress: Callable[[str], None] = lambda s: None, poll_seconds: float = 2.0) -> None:
    """Return once ``shortfall()`` (what is missing, in words) is None; UserError after ``wait_seconds``."""
    short = shortfall()
    if short is None:
        return
    if wait_seconds <= 0:
        raise UserError(f"{short}; use fewer workers or a bigger cluster")
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)  # scale up now, not only once the job's placement group asks
    progress(f"{short} now; waiting up to {wait_seconds:g} s for it to scale up "
             f"({SCALE_UP_TIMEOUT_ENV} changes the wait)")
    deadline = time.monotonic() + wait_seconds
    try:
        while short is not None:
            if time.monotonic() > deadline:
                raise UserError(
                    f"{short} after waiting {wait_seconds:g} s for it to scale up; check that the cluster can "
                    "grow that far (max_workers / maxReplicas of a worker type with those resources) and that "
                    "its new nodes start ('ray status' on the head), or use fewer --workers")
            time.sleep(poll_seconds)
            short = shortfall()
    finally:
        request_resources(bundles=[])  # the job's own placement group holds the nodes from here on
