"""How long a second run on a busy OUTPUT takes to be refused when its SOURCE is a big bucket.

    python benchmarks/busy_output_refusal.py [--objects 20000] [--latency 0.025] [--rounds 3]

moto's S3 server runs on loopback behind a proxy that adds ``--latency`` seconds to every request. A
separate live process holds OUTPUT's lease (a local folder), as a running job would. Each round times,
in fresh processes: ``pipeline label s3://... OUTPUT`` until it exits 2, and ``list_images`` of the same
bucket alone, which is what a run that checked the lease only after listing paid before being refused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))

HOLDER = r'''
import sys
from pipeline.label.lease import Lease
with Lease.acquire(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the benchmark closes stdin
'''

LISTER = r'''
import json, sys, time
started = time.perf_counter()
from pipeline import storage
from pipeline.listing import list_images
storage.set_storage_options(json.loads(sys.argv[2]))
listing = list_images(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - started, "images": len(listing)}))
'''


def timed_refusal(source: str, output: str, options: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline", "label", source, output, "--weights", "none",
                           "--storage-options", json.dumps(options)], capture_output=True, text=True,
                          cwd=HERE.parent)
    seconds = time.perf_counter() - started
    if done.returncode != 2 or "being written by another run" not in done.stdout + done.stderr:
        raise SystemExit(f"expected a refusal (exit 2), got {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return seconds


def timed_listing(source: str, options: dict, objects: int) -> float:
    out = subprocess.run([sys.executable, "-c", LISTER, source, json.dumps(options)], capture_output=True,
                         text=True, check=True, cwd=HERE.parent)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["images"] == objects, result
    return result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.025, help="seconds added to every S3 request")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import s3fs
    from s3_proxy import fault_proxy, moto_s3, use_benchmark_credentials

    use_benchmark_credentials()
    with moto_s3() as endpoint, fault_proxy(endpoint) as proxy, tempfile.TemporaryDirectory() as work:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        fs.mkdir("busy")
        fs.pipe({f"busy/images/{i:06d}.jpg": b"x" for i in range(args.objects)})  # listed, never read
        proxy.latency = args.latency
        options = {"client_kwargs": {"endpoint_url": proxy.url}}
        source, output = "s3://busy/images", str(Path(work) / "out")
        Path(output).mkdir()
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, output], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
        try:
            assert holder.stdout.readline().strip() == "held"
            refusals, listings = [], []
            for round_ in range(args.rounds):  # interleaved: the machine's slow minutes hit both
                before = proxy.requests
                refusals.append(timed_refusal(source, output, options))
                sent = proxy.requests - before
                listings.append(timed_listing(source, options, args.objects))
                print(f"round {round_ + 1}: refused in {refusals[-1]:.2f} s ({sent} S3 requests); "
                      f"listing the bucket alone {listings[-1]:.2f} s")
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
        best_refusal, best_listing = min(refusals), min(listings)
        print(f"{args.objects:,} objects, {args.latency * 1000:.0f} ms a request: refused in "
              f"{best_refusal:.2f} s (best of {args.rounds}); a refusal after the listing would take at least "
              f"{best_listing:.2f} s more ({best_listing / best_refusal:.0f}x)")


if __name__ == "__main__":
    main()
