"""Peak memory of one `pipeline finetune` run as the data set grows; prints one row per size and the ratio.

Each size N is a folder of N digit PNGs in 10 class folders (scikit-learn's digits, shifted copies),
fine-tuned for one epoch with a frozen base. Every 0.5 s the script sums the proportional set size (PSS) of
the driver and every process under it (the local Ray it starts: raylet, object store, workers), so the
object store's pages count once however many processes map them, and reads how much Ray has spilled to
disk. Peak PSS is what the machine had to hold at once.

    python benchmarks/finetune_memory.py WORKDIR [--sizes 4000 40000] [--image-size 96] [-- extra options]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image


def build(root: Path, count: int, size: int) -> Path:
    """``count`` digit images (size x size PNGs) under root/<digit>/, made once per (count, size)."""
    from sklearn.datasets import load_digits

    data = root / f"digits-{count}-{size}"
    if (data / "done").exists():
        return data
    digits = load_digits()
    rng = np.random.default_rng(count)
    for i in range(count):
        index = i % len(digits.target)
        pixels = Image.fromarray((digits.images[index] / 16.0 * 255).astype(np.uint8), "L")
        side = int(size * rng.uniform(0.8, 1.0))
        canvas = Image.new("L", (size, size))
        offset = rng.integers(0, size - side + 1, size=2)
        canvas.paste(pixels.resize((side, side), Image.Resampling.BILINEAR), (int(offset[0]), int(offset[1])))
        folder = data / str(digits.target[index])
        folder.mkdir(parents=True, exist_ok=True)
        canvas.save(folder / f"{i:06d}.png")
    (data / "done").write_text("")
    return data


def tree_pss(root: psutil.Process) -> int:
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def spilled_bytes() -> int:
    total = 0
    for folder in Path("/tmp/ray").glob("session_*/ray_spilled_objects"):
        total += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return total


def run(data: Path, output: Path, size: int, extra: list[str]) -> tuple[float, int, int, int]:
    command = [sys.executable, "-m", "pipeline", "finetune", str(data), str(output), "--overwrite",
               "--epochs", "1", "--fine-tune-epochs", "0", "--image-size", str(size), *extra]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = spill = 0
    driver = psutil.Process(process.pid)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    while process.poll() is None:
        try:
            peak = max(peak, tree_pss(driver))
        except psutil.NoSuchProcess:
            break
        spill = max(spill, spilled_bytes())
        time.sleep(0.5)
    reader.join(10)
    if process.wait() != 0:
        sys.exit(f"pipeline finetune exited {process.returncode}:\n{''.join(lines[-30:])}")
    return time.monotonic() - started, peak, spill, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 40000])
    parser.add_argument("--image-size", type=int, default=96)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # more 'pipeline finetune' options
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    decoded = args.image_size * args.image_size * 3
    print(f"{'images':>8} {'decoded MiB':>12} {'seconds':>8} {'peak PSS MiB':>13} {'spilled MiB':>12}")
    peaks = []
    for count in args.sizes:
        data = build(args.workdir, count, args.image_size)
        seconds, peak, spill, _ = run(data, args.workdir / f"model-{count}", args.image_size, extra)
        peaks.append(peak)
        print(f"{count:>8,} {count * decoded / 2**20:>12.0f} {seconds:>8.1f} {peak / 2**20:>13.0f} "
              f"{spill / 2**20:>12.0f}", flush=True)
    if len(peaks) > 1:
        print(f"peak PSS ratio, largest to smallest: {peaks[-1] / peaks[0]:.2f} "
              f"for {args.sizes[-1] / args.sizes[0]:.0f}x the images")


if __name__ == "__main__":
    main()
