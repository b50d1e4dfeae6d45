"""Listing a big bucket: s3fs's sequential ``find`` against ``pipeline.bucket_listing.iter_bucket``.

    python benchmarks/bucket_listing.py [--keys 200000] [--days 50] [--cameras 6] [--latency 0.025]
                                        [--max-in-flight 32] [--outage 10]

The bucket exists in moto on loopback; its ListObjectsV2 requests are answered by the fault proxy's own
LIST index (``S3FaultProxy.serve_listing``: S3-like cost, where moto spends ~0.4 s CPU a 1000-key page),
``--latency`` seconds added to each request. Keys are laid out DAY/CAMERA/NNNNNN.jpg. Three timings:
s3fs ``find`` (one page after another), ``iter_bucket``, and ``iter_bucket`` again with an ``--outage``
second 503 SlowDown outage started half-way through (it must finish with every key).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

BUCKET = "listing-bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=50)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--latency", type=float, default=0.025)
    parser.add_argument("--max-in-flight", type=int, default=32)
    parser.add_argument("--outage", type=float, default=10.0)
    parser.add_argument("--skip-s3fs", action="store_true", help="leave out the (slow) sequential baseline")
    args = parser.parse_args()

    from s3_proxy import fault_proxy, moto_s3, use_benchmark_credentials

    use_benchmark_credentials()
    import s3fs

    from pipeline import bucket_listing
    from pipeline.bucket_listing import iter_bucket

    folders = [f"2024-{1 + day // 28:02d}-{1 + day % 28:02d}/cam{cam:02d}"
               for day in range(args.days) for cam in range(args.cameras)]
    keys = [f"{folders[n % len(folders)]}/{n:07d}.jpg" for n in range(args.keys)]
    expected = {f"s3://{BUCKET}/{key}" for key in keys}
    print(f"bucket: {len(keys):,} keys in {len(folders)} folders two levels deep, latency {args.latency * 1000:.0f} ms"
          f" a request, arrow listing: {bucket_listing._has_arro3()}", flush=True)

    with moto_s3() as endpoint, fault_proxy(endpoint, latency=args.latency) as proxy:
        s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir(BUCKET)
        proxy.serve_listing(BUCKET, keys)
        options = {"client_kwargs": {"endpoint_url": proxy.url}}

        s3fs_rate = None
        if not args.skip_s3fs:
            fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
            requests, started = proxy.requests, time.perf_counter()
            found = fs.find(BUCKET)
            seconds = time.perf_counter() - started
            assert {f"s3://{key}" for key in found} == expected, "s3fs listed other keys"
            s3fs_rate = len(found) / seconds
            print(f"s3fs find:              {seconds:7.2f} s  {s3fs_rate:9,.0f} objects/s  "
                  f"{proxy.requests - requests} requests", flush=True)

        requests, started = proxy.requests, time.perf_counter()
        got = set()
        for chunk in iter_bucket(f"s3://{BUCKET}", options, max_in_flight=args.max_in_flight):
            got.update(chunk.to_pylist())
        seconds = time.perf_counter() - started
        assert got == expected, f"iter_bucket listed {len(got)} keys, {len(got & expected)} of the bucket's"
        rate = len(got) / seconds
        ratio = f"  {rate / s3fs_rate:5.1f}x s3fs" if s3fs_rate else ""
        print(f"iter_bucket:            {seconds:7.2f} s  {rate:9,.0f} objects/s  "
              f"{proxy.requests - requests} requests, max {proxy.max_in_flight} in flight{ratio}", flush=True)

        requests, refused, started = proxy.requests, proxy.refused, time.perf_counter()
        made = []

        class Recording(bucket_listing.AdaptiveLimit):
            def __init__(self, ceiling):
                super().__init__(ceiling)
                self.lowest = self.limit
                made.append(self)

            def throttle(self):
                super().throttle()
                self.lowest = min(self.lowest, self.limit)

        bucket_listing.AdaptiveLimit = Recording
        got, outage_at = set(), None
        for chunk in iter_bucket(f"s3://{BUCKET}", options, max_in_flight=args.max_in_flight):
            got.update(chunk.to_pylist())
            if outage_at is None and len(got) >= len(expected) // 2:
                outage_at = time.perf_counter() - started
                proxy.outage(args.outage)
        seconds = time.perf_counter() - started
        assert got == expected, f"iter_bucket listed {len(got)} keys, {len(got & expected)} of the bucket's"
        limit = made[0]
        print(f"iter_bucket, outage:    {seconds:7.2f} s  {len(got) / seconds:9,.0f} objects/s  "
              f"{proxy.requests - requests} requests, {proxy.refused - refused} refused (503 SlowDown), "
              f"{args.outage:.0f} s outage from {outage_at:.2f} s; limit fell to {limit.lowest:.0f} "
              f"({limit.throttled} SlowDowns seen)", flush=True)


if __name__ == "__main__":
    main()
