"""pipeline.bucket_listing: the concurrent lister against real moto on loopback, behind the fault proxy."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import BUCKET
from pipeline import bucket_listing
from pipeline.bucket_listing import iter_bucket
from pipeline.storage_retry import AdaptiveLimit, StorageError

INDEXED = "listing-index"  # a bucket whose LISTs the proxy answers from its own index


def listed(url, options, **kwargs) -> list[str]:
    chunks = iter_bucket(url, options, **kwargs)
    assert chunks is not None
    return sorted(url for chunk in chunks for url in chunk.to_pylist())


def s3fs_keys(fs, path) -> list[str]:
    """What s3fs's find says, less folder markers: the reference."""
    return sorted(f"s3://{key}" for key in fs.find(path) if not key.endswith("/"))


@pytest.fixture(scope="module")
def filled(s3_behind_proxy):
    direct, proxy, options = s3_behind_proxy
    nested = {f"images/{day}/cam{cam}/{n}.jpg": b"x" for day in ("2024-01-01", "2024-01-02")
              for cam in range(3) for n in range(4)}
    nested.update({f"images/2024-01-01/cam0/deep/er/{n}.jpg": b"x" for n in range(3)})
    nested.update({"images/top.jpg": b"x", "images/2024-01-02/": b"", "images/2024-01-02/cam1/": b"",
                   "images/weird name+plus&ü.jpg": b"x", "images2/sibling.jpg": b"x", "other.jpg": b"x",
                   "odd/a//b.jpg": b"x", "odd/ok.jpg": b"x"})  # "a//b": obstore cannot name it, s3fs lists odd/
    flat = {f"flat/{n:05d}.jpg": b"" for n in range(1100)}  # > 1000: two pages
    direct.pipe({f"{BUCKET}/{key}": value for key, value in {**nested, **flat}.items()})
    return direct, proxy, options


class Recording(AdaptiveLimit):
    """The lister's AdaptiveLimit, remembered with the lowest limit it fell to."""
    made: list["Recording"] = []

    def __init__(self, ceiling):
        super().__init__(ceiling)
        self.lowest = self.limit
        Recording.made.append(self)

    def throttle(self):
        super().throttle()
        self.lowest = min(self.lowest, self.limit)


@pytest.mark.slow
def test_lists_exactly_what_s3fs_finds(filled):
    direct, proxy, options = filled
    images = s3fs_keys(direct, f"{BUCKET}/images/")
    assert len(images) == 24 + 3 + 2  # markers left out, images2/ not in
    assert listed(f"s3://{BUCKET}/images", options) == images
    assert listed(f"s3://{BUCKET}/images/", options) == images
    assert not any(url.startswith(f"s3://{BUCKET}/images2/") for url in images)
    flat = listed(f"s3://{BUCKET}/flat", options, max_in_flight=4)
    assert flat == s3fs_keys(direct, f"{BUCKET}/flat/") and len(flat) == 1100
    everything = listed(f"s3://{BUCKET}", options)
    assert everything == s3fs_keys(direct, BUCKET)
    assert f"s3://{BUCKET}/odd/a//b.jpg" in everything
    assert listed(f"s3://{BUCKET}/nothing-here", options) == []


@pytest.mark.slow
def test_options_obstore_cannot_translate_go_to_s3fs(filled):
    _, _, options = filled
    assert iter_bucket(f"s3://{BUCKET}/images", {**options, "requester_pays": True}) is None


@pytest.fixture()
def indexed(s3_behind_proxy):
    """A bucket of 40 x 8 folders, 30 keys each (9,600), answered by the proxy's LIST index, 25 ms a request."""
    direct, proxy, options = s3_behind_proxy
    if not direct.exists(INDEXED):
        direct.mkdir(INDEXED)
    keys = [f"{day:03d}/cam{cam}/{n:03d} a+b.jpg" for day in range(40) for cam in range(8) for n in range(30)]
    proxy.serve_listing(INDEXED, keys + ["000/cam0/"])
    proxy.latency = 0.025
    yield proxy, options, sorted(f"s3://{INDEXED}/{key}" for key in keys)
    proxy.heal()
    proxy.latency = 0.0
    proxy.stop_listing(INDEXED)


def test_proxy_index_answers_like_s3(indexed, s3_behind_proxy):
    proxy, options, expected = indexed
    import s3fs

    fs = s3fs.S3FileSystem(**options)  # botocore: url-encoded keys, continuation tokens
    assert s3fs_keys(fs, INDEXED) == expected
    assert sorted(fs.ls(f"{INDEXED}/000")) == [f"{INDEXED}/000/cam{cam}" for cam in range(8)]


def test_outage_during_listing_is_waited_out_with_fewer_requests(indexed, monkeypatch):
    proxy, options, expected = indexed
    Recording.made.clear()
    monkeypatch.setattr(bucket_listing, "AdaptiveLimit", Recording)
    refused, during = proxy.refused, {}

    def measure():
        proxy.reset_max_in_flight()
        time.sleep(1.0)
        during["max_in_flight"] = proxy.max_in_flight

    got, started = [], time.monotonic()
    for chunk in iter_bucket(f"s3://{INDEXED}", options, max_in_flight=16):
        if not got:
            proxy.outage(3.0)  # starts once the listing is under way
            threading.Timer(1.5, measure).start()  # the outage's second half: the limit has fallen
        got.extend(chunk.to_pylist())
    assert sorted(got) == expected
    assert proxy.refused > refused
    limit = Recording.made[0]
    assert limit.throttled > 0 and limit.lowest <= 2
    assert during["max_in_flight"] <= 4  # 16 before the SlowDowns
    assert time.monotonic() - started < 20


def test_outage_longer_than_the_retries_raises_storage_error(indexed):
    proxy, options, _ = indexed
    options = {**options, "config_kwargs": {"retries": {"max_attempts": 1}}}
    proxy.outage(60)
    started = time.monotonic()
    with pytest.raises(StorageError, match=f"s3://{INDEXED}") as raised:
        listed(f"s3://{INDEXED}/001", options, retries=1)
    assert time.monotonic() - started < 10
    assert "list" in str(raised.value) and "SlowDown" in str(raised.value)


def test_missing_bucket_raises_at_once(s3_behind_proxy):
    _, _, options = s3_behind_proxy
    started = time.monotonic()
    with pytest.raises(StorageError, match="s3://no-such-bucket-here.*does not exist"):
        listed("s3://no-such-bucket-here/images", options)
    assert time.monotonic() - started < 3


def test_closing_early_returns_at_once_and_stops_listing(indexed):
    proxy, options, _ = indexed
    proxy.latency = 0.2
    before = proxy.requests
    chunks = iter_bucket(f"s3://{INDEXED}", options, max_in_flight=8)
    first = next(chunks)
    assert len(first) > 0
    started = time.monotonic()
    chunks.close()
    assert time.monotonic() - started < 0.1
    time.sleep(0.5)  # what was in flight finishes
    sent = proxy.requests
    time.sleep(0.5)
    assert proxy.requests == sent  # nothing more was sent
    assert sent - before < 40 * 8 / 2  # far from the whole bucket
