"""CPU an S3 image read costs the process that makes it: obstore (the default) against s3fs.

    python benchmarks/s3_get_cost.py [--objects 300] [--size 60000] [--rounds 2]

moto's S3 server runs on loopback in this process; each reader is measured in a fresh process through
`pipeline.storage.read_bytes`, the labeling and fine-tuning read path (`PIPELINE_S3_READER=s3fs` sends it
to s3fs): the core-seconds to import the client and make its first read (what every decode worker pays
once), then core-ms per GET for ``--objects`` GETs from one thread and from sixteen (the fetch pool).
Process CPU time, not wall time: on the cores a labeling job saturates, CPU is what a read takes from
decoding and the model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))

CHILD = r'''
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
started = time.process_time()
from pipeline import storage
urls = json.loads(sys.argv[1])
storage.set_storage_options(json.loads(sys.argv[2]))
first = storage.read_bytes(urls[0])
setup = time.process_time() - started
result = {"setup_core_s": setup}
for threads in (1, 16):
    cpu = time.process_time()
    wall = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        sizes = list(pool.map(lambda url: len(storage.read_bytes(url)), urls))
    assert sizes == [len(first)] * len(urls)
    result[f"core_ms_{threads}"] = (time.process_time() - cpu) / len(urls) * 1000
    result[f"wall_ms_{threads}"] = (time.perf_counter() - wall) / len(urls) * 1000
print(json.dumps(result))
'''


def measure(reader: str, urls: list[str], options: dict) -> dict:
    env = {**os.environ, "PIPELINE_S3_READER": reader}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(urls), json.dumps(options)], env=env,
                         capture_output=True, text=True, check=True, cwd=HERE.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--size", type=int, default=60_000, help="bytes an object (a 500x375 JPEG is ~60 kB)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import s3fs
    from s3_proxy import moto_s3, use_benchmark_credentials

    use_benchmark_credentials()
    with moto_s3() as endpoint:
        options = {"client_kwargs": {"endpoint_url": endpoint}}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("get-cost")
        payload = os.urandom(args.size)
        for i in range(args.objects):
            fs.pipe_file(f"get-cost/{i}.jpg", payload)
        urls = [f"s3://get-cost/{i}.jpg" for i in range(args.objects)]
        results: dict[str, list[dict]] = {"obstore": [], "s3fs": []}
        for round_ in range(args.rounds):  # interleaved: the machine's slow minutes hit both
            for reader in results:
                results[reader].append(measure(reader, urls, options))
                r = results[reader][-1]
                print(f"round {round_ + 1} {reader}: import + first read {r['setup_core_s']:.2f} core-s; "
                      f"{r['core_ms_1']:.2f} core-ms/GET from 1 thread ({r['wall_ms_1']:.1f} ms wall each), "
                      f"{r['core_ms_16']:.2f} from 16", flush=True)
    best = {reader: {key: min(r[key] for r in runs) for key in runs[0]} for reader, runs in results.items()}
    o, s = best["obstore"], best["s3fs"]
    print(f"best of {args.rounds}: s3fs/obstore CPU = {s['setup_core_s'] / o['setup_core_s']:.1f}x to set up, "
          f"{s['core_ms_1'] / o['core_ms_1']:.1f}x per GET from 1 thread, {s['core_ms_16'] / o['core_ms_16']:.1f}x "
          f"from 16 ({o['core_ms_16']:.2f} vs {s['core_ms_16']:.2f} core-ms)")


if __name__ == "__main__":
    main()
