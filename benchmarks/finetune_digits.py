"""Fine-tune on a larger real digits set and label a held-out set with the exported model; prints numbers.

The set: scikit-learn's 1,797 real 8x8 digits, each written as the original and COPIES-1 shifted/scaled
copies (32x32 PNGs: a random zoom of 0.85-1.15 and a shift of up to 3 pixels, seeded). Every 6th
original digit and all its copies are held out for labeling, so no copy of a held-out digit is trained on.

    python benchmarks/finetune_digits.py WORKDIR [--copies 4] [-- extra 'pipeline finetune' options]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HELD_OUT_EVERY = 6
SIZE = 32


def variant(pixels: np.ndarray, rng: np.random.Generator, first: bool) -> Image.Image:
    """The digit (0..16 grey levels, 8x8) as a 32x32 image; copies are zoomed and shifted."""
    image = Image.fromarray((pixels / 16.0 * 255).astype(np.uint8), "L")
    if first:
        return image.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    side = int(round(SIZE * rng.uniform(0.85, 1.15)))
    scaled = image.resize((side, side), Image.Resampling.BILINEAR)
    canvas = Image.new("L", (SIZE + 16, SIZE + 16))
    dx, dy = rng.integers(-3, 4, size=2)
    canvas.paste(scaled, (8 + (SIZE - side) // 2 + int(dx), 8 + (SIZE - side) // 2 + int(dy)))
    return canvas.crop((8, 8, 8 + SIZE, 8 + SIZE))


def build(root: Path, copies: int) -> tuple[Path, Path, int, int]:
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(7)
    counts = {"train": 0, "heldout": 0}
    for i, (pixels, target) in enumerate(zip(data.images, data.target)):
        part = "heldout" if i % HELD_OUT_EVERY == 0 else "train"
        folder = root / part / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        for copy in range(copies):
            variant(pixels, rng, copy == 0).save(folder / f"{i:04d}_{copy}.png")
            counts[part] += 1
    return root / "train", root / "heldout", counts["train"], counts["heldout"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--copies", type=int, default=4)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.finetune_args = extra
    train, heldout, n_train, n_heldout = build(args.workdir / "digits", args.copies)
    print(f"data: {n_train} training+validation images, {n_heldout} held-out images in {args.workdir / 'digits'}",
          flush=True)
    model = args.workdir / "model"
    options = args.finetune_args or ["--workers", "2", "--epochs", "3", "--fine-tune-epochs", "3", "--unfreeze", "20",
                                     "--image-size", "96", "--augment", "rotate,zoom"]
    command = [sys.executable, "-m", "pipeline", "finetune", str(train), str(model), "--overwrite", *options]
    print("$", " ".join(command[2:]), flush=True)
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode:
        print(done.stderr[-4000:])
        sys.exit(done.returncode)
    print(done.stdout.strip().splitlines()[-1])
    print(f"fine-tuning took {seconds:.0f} s")
    with open(model / "history.csv", newline="") as f:
        for row in csv.DictReader(f):
            print("epoch {epoch} stage {stage}: loss {loss:.4f} acc {accuracy:.4f} val_loss {val_loss:.4f} "
                  "val_acc {val_accuracy:.4f} lr {learning_rate:.2e} {images_per_second:.0f} img/s{mark}".format(
                      **{k: float(v) if k not in ("epoch", "stage") else v for k, v in row.items() if k != "exported"},
                      mark="  <- exported" if row["exported"] == "1" else ""))
    labels = args.workdir / "labels"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline", "label", str(heldout), str(labels), "--model", str(model),
                           "--overwrite"], capture_output=True, text=True)
    if done.returncode:
        print(done.stderr[-4000:])
        sys.exit(done.returncode)
    import pandas as pd

    frame = pd.read_parquet(labels)
    truth = frame["path"].map(lambda p: Path(p).parent.name)
    print(f"held-out accuracy through 'pipeline label': {(truth == frame['label']).mean():.4f} on {len(frame)} "
          f"images ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
