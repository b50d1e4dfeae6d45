"""Decoder speed on one core: the project's decoder vs the Pillow path it replaced, per image.

    taskset -c 0 python benchmarks/decode_speed.py [--images 300] [--size 224]

Prints milliseconds per image (500x375 JPEGs cut from scikit-image's photos, and PNGs) for
``pipeline.images.decode_image``, for the previous decoder (Pillow with JPEG draft mode and a
bilinear resize, ``images.py`` as of commit 2c06df0, read from git when available) and for a bare
Pillow draft + bilinear loop, and the ratios. The target is 1.8 ms per JPEG on one core.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).parent))
from label_throughput import make_photos  # noqa: E402

from pipeline.images import decode_image  # noqa: E402


def previous_decoder():
    """``decode_image`` as it was before libjpeg-turbo (git 2c06df0), or None outside a git checkout."""
    import subprocess
    import types

    try:
        source = subprocess.run(["git", "show", "2c06df0:pipeline/images.py"], capture_output=True, text=True,
                                check=True, cwd=Path(__file__).parent).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("previous_images")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, "previous_images.py", "exec"), module.__dict__)  # our own file, from our own history
    return module.decode_image


def pillow_draft_bilinear(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """The decoder before this change: Pillow, JPEG draft mode, bilinear resize."""
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
        image.draft("RGB", (max(size), max(size)))
    image = ImageOps.exif_transpose(image).convert("RGB")
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def per_image_ms(decode, blobs: list[bytes], size: tuple[int, int], rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for data in blobs:
            decode(data, size)
        best = min(best, (time.perf_counter() - start) / len(blobs) * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    size = (args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        make_photos(Path(tmp), args.images)
        jpegs = [p.read_bytes() for p in sorted(Path(tmp).iterdir())]
    pngs = []
    for data in jpegs[:50]:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buffer, "PNG")
        pngs.append(buffer.getvalue())
    previous = previous_decoder()
    for name, blobs in (("500x375 JPEG", jpegs), ("500x375 PNG", pngs)):
        ours = per_image_ms(decode_image, blobs, size)
        bare = per_image_ms(pillow_draft_bilinear, blobs, size)
        line = (f"{name} -> {args.size}: decode_image {ours:.2f} ms/image; "
                f"bare Pillow draft+bilinear {bare:.2f} ms ({bare / ours:.2f}x)")
        if previous is not None:
            before = per_image_ms(previous, blobs, size)
            line += f"; previous decode_image {before:.2f} ms ({before / ours:.2f}x)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
