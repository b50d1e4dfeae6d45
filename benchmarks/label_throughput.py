"""Labeling throughput: compiled forward pass (ceiling) vs `pipeline label` vs the tutorials' loop.

    python benchmarks/label_throughput.py --images 300 [--model efficientnet_lite0] [--skip-10x]

Prints images/s for (a) the model's compiled forward pass on pre-decoded batches, (b) `pipeline label`
end to end (a fresh process: Ray start, model load, decode, predict, Parquet) and in steady state
(first to last committed row), (c) a seeds-style loop (`load_img` -> `predict`, one image at a time),
the ratios b/a and b/c, and the peak memory (RSS of the job's whole process tree) for N and 10N images.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from PIL import Image

SAMPLES = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "motorcycle_left.png", "retina.jpg"]


def make_photos(folder: Path, count: int) -> None:
    """``count`` distinct 500x375 JPEGs cut from scikit-image's real photos."""
    from pipeline.samples import sample_photos_dir

    rng = np.random.default_rng(0)
    sources = [Image.open(os.path.join(sample_photos_dir(), n)).convert("RGB") for n in SAMPLES]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = sources[i % len(sources)]
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = image.crop((x, y, x + cw, y + ch)).resize((500, 375))
        if i % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(folder / f"img_{i:06d}.jpg", quality=90)


def forward_ceiling(model: str, folder: Path, batch_size: int) -> float:
    """(a) images/s of the compiled forward pass alone, on batches decoded beforehand."""
    from pipeline.images import decode_image
    from pipeline.inference import CompiledClassifier
    from pipeline.models.loading import load_model

    classifier = CompiledClassifier(load_model(model), batch_size=batch_size)
    size = (classifier.loaded.input_size,) * 2
    files = sorted(folder.iterdir())[: batch_size * 8]
    batch = np.stack([decode_image(f.read_bytes(), size) for f in files])
    classifier.predict(batch[:batch_size])  # trace once
    start = time.perf_counter()
    classifier.predict(batch)
    return len(batch) / (time.perf_counter() - start)


def seeds_loop(model: str, folder: Path, count: int) -> float:
    """(c) the tutorials' loop: load_img, img_to_array, preprocess_input, model.predict, per image."""
    import keras

    from pipeline.models.loading import load_model

    loaded = load_model(model)
    files = sorted(folder.iterdir())[:count]
    start = time.perf_counter()
    for f in files:
        image = keras.utils.load_img(f, target_size=(loaded.input_size, loaded.input_size))
        x = loaded.preprocess_input(np.expand_dims(keras.utils.img_to_array(image), 0))
        loaded.keras_model.predict(x, verbose=0)
    return len(files) / (time.perf_counter() - start)


def sample_tree(root: psutil.Process, seen: dict[int, tuple[int, str, float]] | None = None) -> int:
    """One walk of the job's process tree (Ray's processes are the driver's descendants): returns its RSS,
    and, given ``seen``, records there the latest CPU seconds of every process with the most specific role
    its title ever showed (a worker starts untitled, idles as ``ray::IDLE`` between decode tasks and may
    become one of Ray Data's helper actors). A process that exits keeps its last sample, so short-lived
    workers count. Without ``seen`` only the RSS is read: the sampler shares the cores it measures."""
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:  # the tree changed under us; the next sample will see it
        return 0
    rss = 0
    for p in processes:
        try:
            rss += p.memory_info().rss
            if seen is None:
                continue
            times, title = p.cpu_times(), (p.cmdline() or [p.name()])[0]
        except psutil.Error:
            continue
        if p.pid == root.pid:
            rank, role = 5, "driver"
        elif "Predictor" in title:
            rank, role = 4, "predictor actors"
        elif "read_and_decode" in title:
            rank, role = 3, "decode (and idle) workers"
        elif title.startswith("ray::") and title != "ray::IDLE":
            rank, role = 2, "Ray's own processes"
        elif title == "ray::IDLE":
            rank, role = 1, "decode (and idle) workers"
        else:  # raylet, GCS, agents, or a worker before Ray titles it
            rank, role = 0, "Ray's own processes"
        best = seen.get(p.pid, (-1, role, 0.0))
        seen[p.pid] = (rank, role, times.user + times.system) if rank >= best[0] else \
            (best[0], best[1], times.user + times.system)
    return rss


def run_label(model: str, folder: Path, out: Path, extra: list[str]) -> dict[str, float]:
    """(b) `pipeline label` in a fresh process; wall time, steady-state rate, peak tree RSS."""
    cmd = [sys.executable, "-m", "pipeline", "label", str(folder), str(out), "--model", model, "--overwrite",
           "--rows-per-file", "64", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root = psutil.Process(proc.pid)
    peak = [0]
    first_part: list[float] = []

    def watch() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], sample_tree(root))
            if not first_part and out.exists() and any(out.glob("part-*")):
                first_part.append(time.perf_counter())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - start
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"pipeline label failed: {stdout}")
    rows = len(pd.read_parquet(out))
    first_rows = len(pd.read_parquet(sorted(out.glob("part-*"))[0])) if first_part else 0
    steady = (rows - first_rows) / (wall - (first_part[0] - start)) if first_part else float("nan")
    return {"rows": rows, "wall": wall, "end_to_end": rows / wall, "steady": steady, "peak_gib": peak[0] / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="N: photos for the main run")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds-images", type=int, default=60, help="images for the one-at-a-time loop")
    parser.add_argument("--skip-10x", action="store_true", help="skip the 10N memory run")
    parser.add_argument("label_args", nargs="*", help="extra `pipeline label` flags, after --")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="label-bench-"))
    try:
        make_photos(work / "n", args.images)
        a = forward_ceiling(args.model, work / "n", args.batch_size)
        print(f"(a) compiled forward pass, pre-decoded: {a:7.1f} images/s", flush=True)
        c = seeds_loop(args.model, work / "n", args.seeds_images)
        print(f"(c) seeds loop (load_img -> predict):   {c:7.1f} images/s", flush=True)
        label_args = ["--batch-size", str(args.batch_size), *args.label_args]
        b = run_label(args.model, work / "n", work / "out-n", label_args)
        print(f"(b) pipeline label, N={b['rows']}: end to end {b['end_to_end']:.1f} images/s "
              f"({b['wall']:.1f} s incl. Ray start and model load), steady state {b['steady']:.1f} images/s, "
              f"peak RSS {b['peak_gib']:.2f} GiB", flush=True)
        print(f"b/a = {b['steady'] / a:.2f} (steady), {b['end_to_end'] / a:.2f} (end to end);  "
              f"b/c = {b['steady'] / c:.1f} (steady), {b['end_to_end'] / c:.1f} (end to end)")
        if not args.skip_10x:
            make_photos(work / "10n", args.images * 10)
            b10 = run_label(args.model, work / "10n", work / "out-10n", label_args)
            print(f"(b) pipeline label, 10N={b10['rows']}: end to end {b10['end_to_end']:.1f} images/s, "
                  f"steady {b10['steady']:.1f} images/s, peak RSS {b10['peak_gib']:.2f} GiB")
            print(f"peak memory 10N / N = {b10['peak_gib'] / b['peak_gib']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
