"""Which labels change between `--resize squash` and `--resize center-crop` on scikit-image's real photos?

    python benchmarks/resize_modes.py [--model efficientnet_lite0]

Prints, per photo, the top-1 label and score under both modes, and the photos whose label changes.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from pipeline.images import decode_image, is_image_path
from pipeline.inference import CompiledClassifier
from pipeline.models.loading import load_model
from pipeline.samples import sample_photos_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    args = parser.parse_args()
    classifier = CompiledClassifier(load_model(args.model), top_k=1)
    size = (classifier.loaded.input_size,) * 2
    folder = sample_photos_dir()
    names, batches = [], {"squash": [], "center-crop": []}
    for name in sorted(n for n in os.listdir(folder) if is_image_path(n)):
        data = open(os.path.join(folder, name), "rb").read()
        try:
            pixels = {mode: decode_image(data, size, resize_mode=mode) for mode in batches}
        except Exception:  # noqa: BLE001 - the sample folder holds a few files no decoder reads
            continue
        names.append(name)
        for mode, image in pixels.items():
            batches[mode].append(image)
    results = {mode: classifier.predict(np.stack(images)) for mode, images in batches.items()}
    changed = 0
    for i, name in enumerate(names):
        (a,), (b,) = (classifier.names(results[m].ids[i : i + 1])[0] for m in ("squash", "center-crop"))
        mark = "" if a == b else "   <- changed"
        changed += a != b
        print(f"{name:28s} squash {a:28s} {results['squash'].scores[i, 0]:.2f}   "
              f"center-crop {b:28s} {results['center-crop'].scores[i, 0]:.2f}{mark}")
    print(f"{changed} of {len(names)} photos change their top-1 label")


if __name__ == "__main__":
    main()
