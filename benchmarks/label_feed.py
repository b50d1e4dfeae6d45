"""Is the model fed at the machine's speed? `pipeline label` against a tuned single-process tf.data loop.

    python benchmarks/label_feed.py --model mobilenet_v2 --images 1500 6000 [--s3-images 600] [--repeat 3]
    python benchmarks/label_feed.py --images 0 --s3-images 600 --s3-readers obstore s3fs --repeat 3

Everything runs as whole, fresh processes on the same 500x375 JPEGs, so start-up counts on both sides:
- peer: one process, `read_file -> decode_jpeg -> resize -> batch -> prefetch -> compiled forward pass`
  (tf.data with AUTOTUNE parallelism), the loop a user would write instead of this tool, with
  TensorFlow's default CPU allocator (and with --peer-bfc also with the BFC allocator the pipeline sets);
- `pipeline label` on a local Ray: wall time, start-up seconds and steady images/s from its summary, and
  the CPU seconds its processes used (predictor actors, decode workers, driver, Ray's own);
- the machine's limit: cores / (core-seconds of one image's forward pass + its decode), both measured
  with process CPU time in a process set up as a predictor actor, and the steady rate as a fraction of it
  (the limit with TensorFlow's default allocator is printed beside it); the limit is measured again after
  every pipeline run and the steady rate compared with that one, as the machine drifts over minutes;
- one such process per core running forward passes at the same time, without Ray: how much of the
  forward-pass-only limit the cores reach together;
- with --s3-images: the same job reading from S3 (moto on loopback) behind a proxy adding 25 ms to
  every request, against local disk and against the same S3 with no added latency (moto and the proxy
  run in the benchmark's process on the same cores: their CPU share is printed).
Models run with `--weights none` unless they have offline weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from label_throughput import make_photos, sample_tree  # noqa: E402

PEER = r'''
import sys, time, json
start = time.perf_counter()
import tensorflow as tf
from pipeline.inference import CompiledClassifier
from pipeline.models.loading import load_model
files, model, weights, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
paths = [l.strip() for l in open(files)]
loaded = load_model(model, weights)
size = loaded.input_size
classifier = CompiledClassifier(loaded, top_k=5, batch_size=batch)
def load(path):
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    return tf.cast(tf.image.resize(image, (size, size), antialias=True), tf.uint8)
data = (tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch).prefetch(tf.data.AUTOTUNE))
rows = 0
for images in data:
    ids, scores = classifier._forward(images)
    rows += int(ids.shape[0])
print(json.dumps({"rows": rows, "wall": time.perf_counter() - start}))
'''


def run_peer(files: list[str], model: str, weights: str, batch: int, work: Path, allocator_bfc: bool = False) -> dict:
    """The loop as a user writes it: TensorFlow's default CPU allocator, unless ``allocator_bfc``."""
    listing = work / "peer-list.txt"
    listing.write_text("\n".join(files))
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true" if allocator_bfc else "false"}
    out = subprocess.run([sys.executable, "-c", PEER, str(listing), model, weights, str(batch)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


SUMMARY = re.compile(r"labeled ([\d,]+) images? .* in ([\d.]+) s: .*?\(?([\d.]+) s to the first result(?:, steady ([\d.]+) images/s)?")


def run_label(source: str, out: str, model: str, weights: str, extra: list[str], env: dict | None = None) -> dict:
    cmd = [sys.executable, "-m", "pipeline", "label", source, out, "--model", model, "--weights", weights,
           "--overwrite", *extra]
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    root, peak, cpu = psutil.Process(proc.pid), 0, {}
    while proc.poll() is None:
        peak = max(peak, sample_tree(root, cpu))
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pipeline label failed ({proc.returncode}):\n{stderr[-3000:]}")
    match = SUMMARY.search(stdout)
    if not match:
        raise SystemExit(f"no summary line in:\n{stdout}")
    rows, seconds, startup, steady = match.groups()
    # no steady rate when every result came in one burst (a job of one task)
    return {"rows": int(rows.replace(",", "")), "wall": wall, "startup": float(startup), "steady": float(steady or "nan"),
            "peak_gib": peak / 2**30, "cpu": _cpu_by_role(cpu)}


def _cpu_by_role(seen: dict[int, tuple[int, str, float]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for _, role, seconds in seen.values():
        totals[role] = totals.get(role, 0.0) + seconds
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def cpu_line(label: dict) -> str:
    cores = os.cpu_count() or 1
    used = sum(label["cpu"].values())
    return (f"CPU over the run: {used:.0f} of {cores * label['wall']:.0f} core-s (" +
            ", ".join(f"{role} {seconds:.1f}" for role, seconds in label["cpu"].items()) + ")")


# A process set up as a predictor actor is: argv model, weights, folder, batch; then `classifier` and `size`.
ACTOR_PROCESS = r'''
import sys, time, json
from pathlib import Path
import numpy as np
import pipeline  # TensorFlow's defaults (pipeline.tensorflow_env) before it loads, as in every actor
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from pipeline.images import decode_image
from pipeline.inference import CompiledClassifier
from pipeline.models.loading import load_model
model, weights, folder, batch = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
classifier = CompiledClassifier(load_model(model, weights), batch_size=batch)
size = (classifier.loaded.input_size,) * 2
'''

LIMIT = ACTOR_PROCESS + r'''
blobs = [f.read_bytes() for f in sorted(folder.iterdir())[: batch * 8]]
cpu = time.process_time()
pixels = np.stack([decode_image(b, size) for b in blobs])
decode_core = (time.process_time() - cpu) / len(blobs)
classifier.predict(pixels[:batch])  # trace once
classifier.predict(pixels)  # the allocator has seen every shape
cpu, wall = time.process_time(), time.perf_counter()
classifier.predict(pixels)
forward_core = (time.process_time() - cpu) / len(pixels)
print(json.dumps({"decode_ms": decode_core * 1000, "forward_core_ms": forward_core * 1000,
                  "ceiling": len(pixels) / (time.perf_counter() - wall)}))
'''


def machine_limit(model: str, weights: str, folder: Path, batch: int, allocator_bfc: bool = True) -> dict:
    """Images/s the cores could do if they did nothing but decode and run the forward pass.

    Measured in a fresh process set up as a predictor actor is: TensorFlow on one thread, with the
    process defaults of pipeline.tensorflow_env (``allocator_bfc=False``: TensorFlow's default CPU
    allocator instead, what a script that does not set it gets). TensorFlow's default of every core for
    one batch spends more core-time per image (it parallelises depthwise convolutions poorly), which
    would flatter the ratio.
    """
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true" if allocator_bfc else "false"}
    out = subprocess.run([sys.executable, "-c", LIMIT, model, weights, str(folder), str(batch)],
                         capture_output=True, text=True, check=True, env=env)
    limit = json.loads(out.stdout.strip().splitlines()[-1])
    cores = os.cpu_count() or 1
    return {**limit, "cores": cores, "limit": cores * 1000 / (limit["decode_ms"] + limit["forward_core_ms"])}


SIDE_BY_SIDE = ACTOR_PROCESS + r'''
seconds = float(sys.argv[5])
pixels = np.stack([decode_image(f.read_bytes(), size) for f in sorted(folder.iterdir())[: batch * 8]])
classifier.predict(pixels)  # traced, and the allocator has seen every shape
print("ready", flush=True)
sys.stdin.readline()  # every process starts measuring at the same moment
images, wall = 0, time.perf_counter()
while time.perf_counter() - wall < seconds:
    classifier.predict(pixels)
    images += len(pixels)
print(json.dumps({"rate": images / (time.perf_counter() - wall)}))
'''


def side_by_side(model: str, weights: str, folder: Path, batch: int, seconds: float = 10.0) -> float:
    """Images/s of one one-thread forward-pass process per core, all at once: the actors' work without Ray.

    The machine limit adds up the cores as if each ran as fast as one alone; side by side they share
    caches and memory bandwidth (and, on a VM, whatever the host shares), which no scheduling can win back.
    """
    cores = os.cpu_count() or 1
    procs = [subprocess.Popen([sys.executable, "-c", SIDE_BY_SIDE, model, weights, str(folder), str(batch),
                               str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for _ in range(cores)]
    for proc in procs:  # each has imported TensorFlow and traced the model
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"side-by-side forward pass failed: {proc.communicate()[1][-2000:]}")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    rates = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"side-by-side forward pass failed: {err[-2000:]}")
        rates.append(json.loads(out.strip().splitlines()[-1])["rate"])
    return sum(rates)


STARTUP = r'''
import sys, time, json
t = time.perf_counter()
import ray
ray.init("local", include_dashboard=False, logging_level="ERROR")
ray_init = time.perf_counter() - t
ray.shutdown()
import pipeline  # TensorFlow's defaults before it loads, as in an actor
t = time.perf_counter()
import tensorflow as tf
tf_import = time.perf_counter() - t
import numpy as np
from pipeline.inference import CompiledClassifier
from pipeline.models.loading import load_model
t = time.perf_counter()
loaded = load_model(sys.argv[1], sys.argv[2])
model_load = time.perf_counter() - t
t = time.perf_counter()
CompiledClassifier(loaded).predict(np.zeros((1, loaded.input_size, loaded.input_size, 3), np.uint8))
trace = time.perf_counter() - t
print(json.dumps({"ray_init": ray_init, "tf_import": tf_import, "model_load": model_load, "trace": trace}))
'''


def startup_breakdown(model: str, weights: str) -> dict:
    """Seconds of each start-up step, measured one after the other in a fresh process."""
    out = subprocess.run([sys.executable, "-c", STARTUP, model, weights], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def s3_comparison(folder: Path, count: int, model: str, weights: str, extra: list[str], latency: float,
                  repeat: int = 1, readers: tuple[str, ...] = ("obstore",)) -> None:
    import s3fs
    from s3_proxy import fault_proxy, moto_s3, use_benchmark_credentials

    use_benchmark_credentials()
    files = sorted(folder.iterdir())[:count]
    with moto_s3() as endpoint, fault_proxy(endpoint, latency=latency) as proxy, \
            tempfile.TemporaryDirectory() as tmp:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        fs.mkdir("bench-photos")
        for f in files:
            fs.put_file(str(f), f"bench-photos/in/{f.name}")
        local_dir = Path(tmp) / "in"
        local_dir.mkdir()
        for f in files:
            os.link(f, local_dir / f.name)
        options = json.dumps({"client_kwargs": {"endpoint_url": proxy.url}})
        ratios: dict[str, list[float]] = {reader: [] for reader in readers}
        no_latency_ratios: dict[str, list[float]] = {reader: [] for reader in readers}
        for round_ in range(repeat):
            local = run_label(str(local_dir), str(Path(tmp) / "out"), model, weights, extra)
            print(f"  local disk, round {round_ + 1}: {cpu_line(local)}", flush=True)
            for reader in readers:  # PIPELINE_S3_READER: which client the decode tasks read with
                runs = {}
                for added in (0.0, latency):  # the S3 server and the proxy run in this process, on the same cores
                    proxy.latency = added
                    before, cpu = proxy.requests, time.process_time()
                    runs[added] = run_label("s3://bench-photos/in", str(Path(tmp) / "out-s3"), model, weights,
                                            [*extra, "--storage-options", options],
                                            env={"PIPELINE_S3_READER": reader})
                    runs[added]["requests"] = proxy.requests - before
                    runs[added]["server_cores"] = (time.process_time() - cpu) / runs[added]["wall"]
                remote, plain = runs[latency], runs[0.0]
                ratios[reader].append(local["wall"] / remote["wall"])
                no_latency_ratios[reader].append(plain["wall"] / remote["wall"])
                print(f"S3 +{latency * 1000:.0f} ms/request, {count} images, reads by {reader}, round {round_ + 1}: "
                      f"wall {remote['wall']:.1f} s, steady {remote['steady']:.1f} img/s ({remote['requests']} "
                      f"requests; moto and the proxy used {remote['server_cores']:.2f} cores) vs local disk wall "
                      f"{local['wall']:.1f} s, steady {local['steady']:.1f} img/s: S3/local = "
                      f"{ratios[reader][-1]:.2f} (wall), {remote['steady'] / local['steady']:.2f} (steady); vs S3 "
                      f"with no added latency wall {plain['wall']:.1f} s (server {plain['server_cores']:.2f} "
                      f"cores): {no_latency_ratios[reader][-1]:.2f}", flush=True)
                print(f"  S3 +{latency * 1000:.0f} ms, {reader}: {cpu_line(remote)}", flush=True)
        for reader in readers:
            print(f"S3 +{latency * 1000:.0f} ms/request, {count} images, reads by {reader}: median S3/local = "
                  f"{float(np.median(ratios[reader])):.2f}, S3 +{latency * 1000:.0f} ms / S3 +0 ms = "
                  f"{float(np.median(no_latency_ratios[reader])):.2f} (wall) over {repeat} rounds", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--images", type=int, nargs="+", default=[1500])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--s3-images", type=int, default=0, help="also compare S3 with added latency")
    parser.add_argument("--latency", type=float, default=0.025, help="seconds added to every S3 request")
    parser.add_argument("--s3-readers", nargs="+", default=["obstore"], choices=["obstore", "s3fs"],
                        help="S3 clients to compare (PIPELINE_S3_READER), each against the same local run")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--peer-bfc", action="store_true",
                        help="also run the tf.data loop with TensorFlow's BFC CPU allocator (what the pipeline sets)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per size (pipeline, then peer); medians reported")
    parser.add_argument("label_args", nargs="*", help="extra `pipeline label` flags, after --")
    args = parser.parse_args()
    weights = "imagenet" if args.model.startswith("efficientnet_lite") else "none"
    extra = ["--batch-size", str(args.batch_size), *args.label_args]
    with tempfile.TemporaryDirectory(prefix="label-feed-") as tmp:
        work = Path(tmp)
        photos = work / "photos"
        make_photos(photos, max(args.images + [args.s3_images]))
        default = machine_limit(args.model, weights, photos, args.batch_size, allocator_bfc=False)
        limit = machine_limit(args.model, weights, photos, args.batch_size)
        print(f"{args.model}: decode {limit['decode_ms']:.2f} core-ms/image, forward pass "
              f"{limit['forward_core_ms']:.2f} core-ms/image (compiled ceiling {limit['ceiling']:.1f} img/s); "
              f"machine limit {limit['cores']} cores -> {limit['limit']:.1f} img/s. With TensorFlow's default CPU "
              f"allocator: forward pass {default['forward_core_ms']:.2f} core-ms/image, limit "
              f"{default['limit']:.1f} img/s", flush=True)
        if any(n > 0 for n in args.images):
            together = side_by_side(args.model, weights, photos, args.batch_size)
            forward_only = limit["cores"] * 1000 / limit["forward_core_ms"]
            # What the cores give when all of them run forward passes, plus the decode's core-time on top.
            side_limit = 1 / (1 / together + limit["decode_ms"] / 1000 / limit["cores"])
            print(f"{limit['cores']} one-thread forward passes side by side: {together:.1f} img/s = "
                  f"{together / forward_only:.2f}x the {forward_only:.1f} img/s that {limit['cores']} times one "
                  f"alone would give (forward pass only); with the decode on top: side-by-side limit "
                  f"{side_limit:.1f} img/s", flush=True)
        steps = startup_breakdown(args.model, weights)
        print("start-up steps (s): " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()), flush=True)
        for n in [n for n in args.images if n > 0]:  # --images 0: only the S3 comparison
            subset = work / f"n{n}"
            subset.mkdir()
            for f in sorted(photos.iterdir())[:n]:
                os.link(f, subset / f.name)
            labels, peers, bfc_peers, shares = [], [], [], []
            for round_ in range(args.repeat):  # interleaved, so a slow minute of the machine hits both sides
                label = run_label(str(subset), str(work / f"out{n}"), args.model, weights, extra)
                labels.append(label)
                # The forward pass's core-time drifts by 10-20% over minutes on a shared machine: the limit
                # is measured again right after each run, and the steady rate compared with that one.
                limit = machine_limit(args.model, weights, photos, args.batch_size)
                shares.append(label["steady"] / limit["limit"])
                line = (f"N={n} round {round_ + 1}: pipeline label {label['wall']:.1f} s ({label['startup']:.1f} s to "
                        f"the first result, steady {label['steady']:.1f} img/s = {shares[-1]:.2f}x the machine "
                        f"limit of {limit['limit']:.1f} img/s measured just after it, "
                        f"{label['steady'] / side_limit:.2f}x the side-by-side limit, peak RSS "
                        f"{label['peak_gib']:.2f} GiB)")
                if not args.skip_peer:
                    peer = run_peer([str(p) for p in sorted(subset.iterdir())], args.model, weights,
                                    args.batch_size, work)
                    peers.append(peer)
                    line += f"; tf.data loop {peer['wall']:.1f} s; pipeline/peer = {peer['wall'] / label['wall']:.2f}x"
                if args.peer_bfc:
                    peer = run_peer([str(p) for p in sorted(subset.iterdir())], args.model, weights,
                                    args.batch_size, work, allocator_bfc=True)
                    bfc_peers.append(peer)
                    line += (f"; tf.data loop with the BFC allocator {peer['wall']:.1f} s; "
                             f"pipeline/that = {peer['wall'] / label['wall']:.2f}x")
                print(line, flush=True)
                print(f"N={n} round {round_ + 1}: {cpu_line(label)}", flush=True)
            wall = float(np.median([r["wall"] for r in labels]))
            steady = float(np.median([r["steady"] for r in labels]))
            line = (f"N={n} median of {args.repeat}: pipeline label {wall:.1f} s (steady {steady:.1f} img/s; "
                    f"{float(np.median(shares)):.2f}x the machine limit of its round, peak RSS "
                    f"{max(r['peak_gib'] for r in labels):.2f} GiB max)")
            if peers:
                peer_wall = float(np.median([r["wall"] for r in peers]))
                line += f"; tf.data loop {peer_wall:.1f} s; pipeline/peer = {peer_wall / wall:.2f}x"
            if bfc_peers:
                peer_wall = float(np.median([r["wall"] for r in bfc_peers]))
                line += f"; with the BFC allocator {peer_wall:.1f} s: {peer_wall / wall:.2f}x"
            print(line, flush=True)
        if args.s3_images:
            s3_comparison(photos, args.s3_images, args.model, weights, extra, args.latency, args.repeat,
                          tuple(args.s3_readers))


if __name__ == "__main__":
    main()
