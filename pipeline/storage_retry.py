"""Retries for the driver's own storage calls: listing, the lease, the manifest, part uploads.

Image reads retry in ``pipeline.fetch``; every other call the driver makes goes through ``with_retries``,
with the same rounds and backoff (``--read-retries``: 0.5 s, 1 s, 2 s, ... apart, on top of the storage
client's own retries). A call that still fails raises ``StorageError``: one line naming the store, the
operation and the error, exit 1, never a traceback. Permanent answers (not found, a local permission,
a bad URL) are not retried: they are raised as they are, for the caller to turn into its own message.
"""

from __future__ import annotations

import errno
import threading
import time
from typing import Callable, TypeVar

from pipeline.errors import JobFailedError

T = TypeVar("T")

FIRST_RETRY_DELAY = 0.5  # seconds before the first retry; doubles each round (as image reads)
DEFAULT_RETRIES = 5  # rounds after the first try: about 15 s of outage waited out
PERMANENT = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, ValueError, ImportError,
             TypeError, KeyError, UnicodeError)
# How S3 (botocore's ClientError, obstore's status line), GCS and others say "too many requests".
THROTTLED = ("slowdown", "slow down", "503 service unavailable", "throttl", "toomanyrequests",
             "429 too many requests", "reduce your request rate", "requestlimitexceeded")


class StorageError(JobFailedError):
    """A storage call of the driver failed after every retry (exit 1)."""


def is_throttled(err: BaseException) -> bool:
    """Whether the store asked us to slow down (503 SlowDown, 429): send fewer requests, not just later."""
    text = f"{type(err).__name__} {err} {err.__cause__ or ''}".lower()
    return any(sign in text for sign in THROTTLED)


def is_transient(err: BaseException, remote: bool) -> bool:
    """Whether another try may succeed: throttling, 5xx, timeouts, resets; on object stores also access
    errors (expired credentials answer AccessDenied). Local permission errors and missing files do not pass."""
    if isinstance(err, PERMANENT):
        return False
    if isinstance(err, PermissionError):
        return remote
    if isinstance(err, OSError) and not remote and err.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES):
        return False
    return isinstance(err, (OSError, TimeoutError, ConnectionError)) or remote


def store_name(location: str) -> str:
    """'s3://bucket' for a URL, 'local disk' for a path: the store an error message names."""
    if "://" in location and not location.startswith("file://"):
        protocol, _, rest = location.partition("://")
        return f"{protocol}://{rest.split('/', 1)[0]}"
    return "local disk"


def with_retries(operation: str, location: str, call: Callable[[], T], retries: int = DEFAULT_RETRIES,
                 on_throttle: Callable[[], None] | None = None,
                 final: Callable[[BaseException], bool] = lambda err: False) -> T:
    """``call()``, tried again after transient errors; StorageError naming ``operation`` on ``location`` after
    the last round. ``on_throttle`` is told of every SlowDown (a listing lowers its concurrency); errors for
    which ``final`` is true are answers, not failures (a conditional PUT that lost), raised at once."""
    remote = "://" in location and not location.startswith("file://")
    delay = FIRST_RETRY_DELAY
    for attempt in range(retries + 1):
        try:
            return call()
        except BaseException as err:  # noqa: BLE001 - classified below; KeyboardInterrupt passes
            if (isinstance(err, (KeyboardInterrupt, SystemExit, JobFailedError)) or final(err)
                    or not is_transient(err, remote)):
                raise
            if on_throttle is not None and is_throttled(err):
                on_throttle()
            if attempt == retries:
                raise StorageError(storage_failure(operation, location, err, retries)) from err
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def storage_failure(operation: str, location: str, err: BaseException, retries: int) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    first = first.split(": <?xml")[0][:300]
    return (f"{store_name(location)}: {operation} '{location}' failed after {retries} retries "
            f"({type(err).__name__}: {first}); the store may be throttling or down: wait and re-run with --resume "
            "(nothing committed is lost), or raise --read-retries")


class AdaptiveLimit:
    """How many requests to keep in flight: halved on each SlowDown, one more after each success (AIMD, as
    botocore's adaptive mode), between 1 and ``ceiling``. Thread-safe; ``slot()`` blocks while at the limit."""

    def __init__(self, ceiling: int):
        self.ceiling = max(1, ceiling)
        self.limit = float(self.ceiling)
        self.in_flight = 0
        self.throttled = 0  # SlowDown answers seen
        self._cond = threading.Condition()

    def throttle(self) -> None:
        with self._cond:
            self.throttled += 1
            self.limit = max(1.0, self.limit / 2)

    def success(self) -> None:
        with self._cond:
            self.limit = min(float(self.ceiling), self.limit + 1.0 / max(1.0, self.limit))
            self._cond.notify_all()

    def acquire(self) -> None:
        with self._cond:
            while self.in_flight >= int(self.limit):
                self._cond.wait(0.1)
            self.in_flight += 1

    def release(self) -> None:
        with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()
