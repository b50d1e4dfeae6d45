"""float16 or float32 for the `embedding` column? Parquet size and cosine-similarity error on real photos.

    python benchmarks/embedding_precision.py [--model efficientnet_lite0]

Embeds scikit-image's sample photos and a copy of each with 6% cropped off every edge, writes the
vectors as Parquet list<float32> and list<float16> (pyarrow defaults: snappy), and compares the
files' sizes, the cosine similarities of every pair, and each photo's nearest neighbour.
"""

from __future__ import annotations

import argparse
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.images import decode_image, is_image_path
from pipeline.inference import CompiledClassifier
from pipeline.models.loading import load_model
from pipeline.samples import sample_photos_dir

CROP = 0.06  # share cut off each edge for the near-duplicate copy


def cropped(data: bytes) -> bytes:
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    dx, dy = int(w * CROP), int(h * CROP)
    out = io.BytesIO()
    image.crop((dx, dy, w - dx, h - dy)).save(out, "PNG")
    return out.getvalue()


def parquet_bytes(vectors: np.ndarray, dtype) -> int:
    n, d = vectors.shape
    values = pa.array(vectors.astype(dtype).ravel())
    column = pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), values)
    sink = io.BytesIO()
    pq.write_table(pa.table({"embedding": column}), sink)
    return len(sink.getvalue())


def cosine(vectors: np.ndarray) -> np.ndarray:
    unit = vectors.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    return unit @ unit.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    args = parser.parse_args()
    classifier = CompiledClassifier(load_model(args.model), top_k=1, embeddings=True)
    size = (classifier.loaded.input_size,) * 2
    folder = sample_photos_dir()
    images, names = [], []
    for name in sorted(n for n in os.listdir(folder) if is_image_path(n)):
        data = open(os.path.join(folder, name), "rb").read()
        try:
            images += [decode_image(data, size), decode_image(cropped(data), size)]
            names += [name, f"{name} (cropped)"]
        except Exception:  # noqa: BLE001 - the sample folder holds a few files no decoder reads
            continue
    full = classifier.predict(np.stack(images)).features
    half = full.astype(np.float16).astype(np.float32)
    n, d = full.shape
    sizes = {name: parquet_bytes(full, dtype) for name, dtype in (("float32", np.float32), ("float16", np.float16))}
    for name, size_bytes in sizes.items():
        print(f"{name}: {size_bytes} bytes for {n} vectors of {d}: {size_bytes / n:.0f} bytes per image")
    print(f"float16 / float32 size: {sizes['float16'] / sizes['float32']:.3f}")
    exact, rounded = cosine(full), cosine(half)
    off = ~np.eye(n, dtype=bool)
    error = np.abs(exact - rounded)[off]
    print(f"cosine similarity, {off.sum() // 2} pairs: max |float16 - float32| {error.max():.2e}, "
          f"mean {error.mean():.2e}")
    nearest_exact = np.where(off, exact, -2).argmax(axis=1)
    nearest_half = np.where(off, rounded, -2).argmax(axis=1)
    print(f"nearest neighbour the same for {np.sum(nearest_exact == nearest_half)} of {n} images")
    pairs = np.arange(0, n, 2)
    copy_is_nearest = np.sum(nearest_exact[pairs] == pairs + 1)
    print(f"photo vs its cropped copy: cosine median {np.median(exact[pairs, pairs + 1]):.3f}; different photos: "
          f"median {np.median(exact[pairs][:, pairs][~np.eye(len(pairs), dtype=bool)]):.3f}; the copy is the "
          f"nearest neighbour of {copy_is_nearest} of {len(pairs)} photos")
    for i in pairs[nearest_exact[pairs] != pairs + 1]:
        print(f"  {names[i]}: nearest is {names[nearest_exact[i]]} ({exact[i, nearest_exact[i]]:.3f}; "
              f"its copy {exact[i, i + 1]:.3f})")

if __name__ == "__main__":
    main()
