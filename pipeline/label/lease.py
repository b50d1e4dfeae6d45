"""One writer per OUTPUT: a lease file taken by an exclusive create, kept alive by a heartbeat.

``_pipeline_lease.json`` names its holder (host, pid, since) and its last heartbeat.
What we rely on to make the create exclusive:
- local folders: ``link(2)`` of a fully written file, which fails when the name exists (like ``O_EXCL``);
- S3: a conditional PUT, ``If-None-Match: *`` (s3fs ``pipe_file(mode="create")``; AWS S3 since
  2024-08 and moto honour it), and heartbeats / take-overs with ``If-Match: <etag>``, so two runs
  never both believe they hold it;
- other fsspec stores: ``pipe_file(mode="create")`` where the store implements it, else a
  check-then-write that is only best effort (said in the docs, not hidden).
A run killed with ``kill -9`` stops its heartbeat: once ``ttl`` seconds pass without one the lease is
expired and the next run takes it over, at once when the holder ran on this machine and its process
is gone; ``--force-unlock`` takes over a lease that has not expired yet (a holder on another machine).
Before each commit the holder checks that the lease is still its own, so a run that lost it (paused
past its ttl and taken over) stops instead of writing beside the new holder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from pipeline import storage
from pipeline.errors import JobFailedError, UserError
from pipeline.results import LEASE_NAME
from pipeline.storage_retry import DEFAULT_RETRIES, with_retries

DEFAULT_TTL = 60.0  # seconds without a heartbeat after which a lease is expired
_HELD_HERE: set[str] = set()  # tokens of the leases this process holds now


@dataclass
class LeaseRecord:
    token: str  # unique per acquisition
    holder: str  # host:pid of the run
    since: str  # ISO time the run took the lease
    heartbeat: float  # epoch seconds of the last heartbeat
    ttl: float  # seconds after the last heartbeat when the lease expires

    def expired(self, now: float | None = None) -> bool:
        return (now or time.time()) - self.heartbeat > self.ttl

    def holder_gone(self) -> bool:
        """True when the holder ran on this machine and is known dead, so no need to wait for expiry:
        its process no longer exists, or it is this process and no Lease here holds that token
        (a run whose release failed, e.g. during a storage outage)."""
        host, _, pid_text = self.holder.rpartition(":")
        if host != socket.gethostname() or not pid_text.isdigit():
            return False
        pid = int(pid_text)
        if pid == os.getpid():
            return self.token not in _HELD_HERE
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def describe(self) -> str:
        age = time.time() - self.heartbeat
        return f"{self.holder} since {self.since} (last heartbeat {age:.0f} s ago, expires after {self.ttl:.0f} s)"


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _precondition_failed(err: BaseException) -> bool:
    """S3's answer to a conditional PUT that lost (412 PreconditionFailed; s3fs raises it as an OSError)."""
    text = f"{err} {err.__cause__ or ''}".lower()
    return any(s in text for s in ("precondition", "pre-condition", "412", "already exists"))


class LeaseStore:
    """Exclusive create, read and compare-and-swap of the lease file on one storage."""

    def __init__(self, output: str, retries: int = DEFAULT_RETRIES):
        self.retries = retries
        self.location = storage.join(output, LEASE_NAME)
        self.fs, self.path = storage.filesystem(self.location)
        self.local = not storage.is_url(output)
        self.s3 = type(self.fs).__name__ == "S3FileSystem"

    def read(self) -> tuple[LeaseRecord | None, str | None]:
        """The current record and its version (ETag on S3, the token elsewhere); (None, None) if absent."""
        def read() -> tuple[bytes, str | None]:
            if self.s3:
                self.fs.invalidate_cache(self.path)
                info = self.fs.info(self.path)
                return self.fs.cat_file(self.path), info.get("ETag")
            with self.fs.open(self.path, "rb") as f:
                return f.read(), None

        try:
            data, version = with_retries("read the lease", self.location, read, self.retries)
        except FileNotFoundError:
            return None, None
        try:
            record = LeaseRecord(**json.loads(data))
        except Exception:  # noqa: BLE001 - a half-written lease from a crash: treat as expired
            record = LeaseRecord("damaged", "unknown", "unknown", 0.0, 0.0)
        return record, version or record.token

    def create(self, record: LeaseRecord) -> bool:
        """Write ``record`` only if no lease exists; False when another run got there first."""
        data = json.dumps(asdict(record)).encode()
        if self.local:
            # Write the record aside, then link it into place: link(2) fails when the name exists
            # (the O_EXCL of a whole file), so no reader ever sees a lease half-written.
            staged = f"{self.path}.{record.token}.new"
            with open(staged, "wb") as f:
                f.write(data)
            try:
                os.link(staged, self.path)
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links: O_EXCL, with a short half-written window
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            finally:
                os.unlink(staged)
            return True
        try:
            with_retries("take the lease", self.location, lambda: self.fs.pipe_file(self.path, data, mode="create"),
                         self.retries, final=_precondition_failed)
        except FileExistsError:
            return False
        except OSError as err:
            if _precondition_failed(err):
                return False
            raise
        return True

    def replace(self, record: LeaseRecord, version: str) -> bool:
        """Overwrite the lease only if it is still at ``version``; False when someone else changed it."""
        data = json.dumps(asdict(record)).encode()
        if self.s3:
            try:
                with_retries("renew the lease", self.location,
                             lambda: self.fs.pipe_file(self.path, data, IfMatch=version), self.retries,
                             final=_precondition_failed)
            except OSError as err:
                if _precondition_failed(err):
                    return False
                raise
            return True
        current, current_version = self.read()
        if current is None or current_version != version:
            return False
        if self.local:
            tmp = f"{self.path}.{record.token}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        else:
            self.fs.pipe_file(self.path, data)
        return True

    def take_over(self, record: LeaseRecord, version: str) -> bool:
        """Replace the expired lease at ``version`` by ``record``; exactly one contender wins."""
        if not self.local:
            return self.replace(record, version)
        # Locally a rename is the compare-and-swap: only one run can move the old file away.
        aside = f"{self.path}.{record.token}.old"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        with open(aside, "rb") as f:
            moved = f.read()
        try:
            moved_token = json.loads(moved).get("token")
        except Exception:  # noqa: BLE001
            moved_token = "damaged"
        if moved_token != version:  # we moved a newer lease: put it back unless another exists now
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.unlink(aside)
            return False
        os.unlink(aside)
        return self.create(record)

    def remove_if(self, version: str) -> None:
        current, current_version = self.read()
        if current is not None and current_version == version:
            self.fs.rm(self.path)


def _live(current: LeaseRecord, force_unlock: bool) -> bool:
    """Whether ``current`` still keeps other runs out: not expired, its holder not known dead, no --force-unlock."""
    return not (current.expired() or current.holder_gone() or force_unlock)


def _held_by_another_run(output: str, current: LeaseRecord) -> UserError:
    return UserError(f"OUTPUT '{output}' is being written by another run: {current.describe()}; wait for it to "
                     "finish, or if it was killed, pass --force-unlock (or wait "
                     f"{max(0.0, current.ttl - (time.time() - current.heartbeat)):.0f} s for the lease to expire)")


class Lease:
    """The lease of one run on OUTPUT: acquired in ``acquire``, renewed by a thread, freed by ``release``."""

    def __init__(self, store: LeaseStore, record: LeaseRecord, version: str, taken_over: LeaseRecord | None):
        self.store = store
        self.record = record
        self.version = version
        self.taken_over = taken_over  # the expired or force-unlocked lease this run replaced, if any
        self.lost: str | None = None
        _HELD_HERE.add(record.token)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="output-lease-heartbeat")
        self._thread.start()

    @classmethod
    def acquire(cls, output: str, ttl: float = DEFAULT_TTL, force_unlock: bool = False,
                retries: int = DEFAULT_RETRIES) -> "Lease":
        """Take OUTPUT's lease, or UserError naming the run that holds it."""
        store = LeaseStore(output, retries)
        for _ in range(5):  # another run may create or replace it between our read and write
            record = LeaseRecord(uuid.uuid4().hex, f"{socket.gethostname()}:{os.getpid()}", _now_iso(),
                                 time.time(), ttl)
            _HELD_HERE.add(record.token)  # before the create: other threads here must see it as live
            if store.create(record):
                return cls(store, record, store.read()[1] or record.token, None)
            _HELD_HERE.discard(record.token)
            current, version = store.read()
            if current is None:
                continue  # released meanwhile: try again
            if current.token == record.token:  # our create went through, its answer was lost and the retry lost
                return cls(store, record, version, None)
            if _live(current, force_unlock):
                raise _held_by_another_run(output, current)
            _HELD_HERE.add(record.token)
            if store.take_over(record, version):
                return cls(store, record, store.read()[1] or record.token, current)
            _HELD_HERE.discard(record.token)
        raise UserError(f"OUTPUT '{output}' is contended: its lease changed hands while this run tried to "
                        "take it; try again in a minute")

    @staticmethod
    def refuse_if_held(output: str, force_unlock: bool = False) -> None:
        """UserError at once when a live run holds OUTPUT's lease: before this run lists its source or starts
        Ray, so a second run on a bucket of millions is refused in moments, not after its whole listing.

        Only a look: ``acquire`` still decides, and a lease that cannot be read here (no OUTPUT yet, no
        permission) is left for ``check_writable`` and ``acquire`` to report.
        """
        current = Lease.live_holder(output, force_unlock)
        if current is not None:
            raise _held_by_another_run(output, current)

    @staticmethod
    def live_holder(output: str, force_unlock: bool = False) -> LeaseRecord | None:
        """The run holding OUTPUT's lease now, if any: None when there is none, it has expired, its holder is
        known dead or ``force_unlock`` is given, or the lease cannot be read (only a look: ``acquire`` judges
        again, with a message)."""
        try:
            current, _ = LeaseStore(output).read()
        except Exception:  # noqa: BLE001 - a lease we cannot read holds nothing to show or refuse here
            return None
        return current if current is not None and _live(current, force_unlock) else None

    def _beat(self) -> None:
        interval = max(0.5, self.record.ttl / 4)
        while not self._stop.wait(interval):
            self.renew()

    def renew(self) -> None:
        if self.lost:
            return
        record = LeaseRecord(**{**asdict(self.record), "heartbeat": time.time()})
        try:
            if self.store.replace(record, self.version):
                self.record, self.version = record, self.store.read()[1] or record.token
                return
        except Exception:  # noqa: BLE001 - a failed heartbeat is retried; expiry is judged by readers
            return
        current, _ = self.store.read()
        holder = current.describe() if current else "nobody (the lease file was removed)"
        self.lost = f"this run lost the lease on its OUTPUT; it is now held by {holder}"

    def check(self) -> None:
        """Raise before a commit when another run has taken over the lease (read afresh, not cached)."""
        if not self.lost:
            current, version = self.store.read()
            if current is None or current.token != self.record.token:
                holder = current.describe() if current else "nobody (the lease file was removed)"
                self.lost = f"this run lost the lease on its OUTPUT; it is now held by {holder}"
        if self.lost:
            raise JobFailedError(f"{self.lost}; stopped without writing more, so no row is written twice")

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        _HELD_HERE.discard(self.record.token)
        if not self.lost:
            try:
                self.store.remove_if(self.version)
            except Exception:  # noqa: BLE001 - it will expire on its own
                pass

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
