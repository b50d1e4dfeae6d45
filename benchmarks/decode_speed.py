"""Decoder speed on one core: the project's decoder vs the Pillow path it replaced, per image.

    taskset -c 0 python benchmarks/decode_speed.py [--images 300] [--size 224]

Prints milliseconds per image (500x375 JPEGs cut from scikit-image's photos, and PNGs) for
``pipeline.images.decode_image``, for the previous decoder (Pillow with JPEG draft mode and a
bilinear resize, ``images.py`` as of commit 2c06df0, read from git when available) and for a bare
Pillow draft + bilinear loop, and the ratios. The target is 1.8 ms per JPEG on one core.
Then the parts of a JPEG decode that the design chose between (libjpeg-turbo at 5/8 against 1/1,
OpenCV's fractional ``INTER_AREA`` against bilinear-to-2x + 2x2 area), and how far the resize is from
an exact area average on a zone plate (all frequencies up to Nyquist) at several shrink factors.
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

from pipeline.images import decode_image, resize  # noqa: E402


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


def parts(jpegs: list[bytes], size: tuple[int, int]) -> None:
    """The choices inside ``decode_image`` for a JPEG, timed on fresh arrays as in a real decode."""
    import cv2
    import simplejpeg

    height, width = size
    at_5_8 = lambda data, _: simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=height,  # noqa: E731
                                                    min_width=width)
    full = lambda data, _: simplejpeg.decode_jpeg(data, colorspace="RGB")  # noqa: E731
    area = lambda data, _: cv2.resize(at_5_8(data, _), (width, height),  # noqa: E731
                                      interpolation=cv2.INTER_AREA)
    ours = lambda data, _: resize(full(data, _), size)  # noqa: E731
    times = {name: per_image_ms(f, jpegs, size) for name, f in
             (("5/8", at_5_8), ("1/1", full), ("5/8 + INTER_AREA", area), ("1/1 + bilinear-2x + 2x2 area", ours))}
    print(f"  libjpeg-turbo: {times['5/8']:.2f} ms at 5/8 (plain-C IDCT), {times['1/1']:.2f} ms at 1/1 (SIMD)")
    print(f"  with the resize: 5/8 + fractional INTER_AREA {times['5/8 + INTER_AREA']:.2f} ms, "
          f"1/1 + bilinear-2x + 2x2 area {times['1/1 + bilinear-2x + 2x2 area']:.2f} ms")


def zone_plate_error(side: int) -> None:
    """Mean |difference| from OpenCV's exact area average, for our resize and for plain bilinear."""
    import cv2

    cells = []
    for shrink in (1.3, 1.7, 2.2, 2.5, 3.0, 4.5):
        height, width = int(side * 1.2), int(side * shrink)
        y, x = np.mgrid[0:height, 0:width].astype(np.float64)
        plate = (127.5 + 127.5 * np.cos(np.pi * (x ** 2 + y ** 2) / (2 * max(width, height)))).astype(np.uint8)
        plate = np.dstack([plate] * 3)
        exact = cv2.resize(plate, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
        ours = np.abs(resize(plate, (side, side)).astype(np.float32) - exact).mean()
        bilinear = np.abs(cv2.resize(plate, (side, side), interpolation=cv2.INTER_LINEAR) - exact).mean()
        cells.append(f"{shrink}x: {ours:.1f} (bilinear {bilinear:.1f})")
    print("  zone plate, mean |diff| from exact area, by horizontal shrink: " + ", ".join(cells))


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
        if name.endswith("JPEG"):
            parts(blobs, size)
    zone_plate_error(args.size)


if __name__ == "__main__":
    main()
