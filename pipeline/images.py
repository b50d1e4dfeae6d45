"""Turn image bytes into a model's input: RGB uint8, oriented, resized. The only decoder.

Resizing squashes the whole image to the model's square size with an
antialiased filter (``_squash``), like Keras's ``load_img``/``image_dataset_from_directory``
squash: nothing is cropped away (a label job must see the whole picture), and
fine-tuning and labeling see identical pixels because both call this module.
Every failure is an ``ImageError`` with a short reason a batch job stores in its
``error`` column; nothing else escapes ``decode_or_error``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg
from pillow_heif import register_heif_opener
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif")

# Phone photos: HEIC/HEIF through pillow-heif's Pillow plugin (libheif applies the stored rotation and
# resets EXIF orientation to 1); AVIF is built into Pillow >= 11.3.
register_heif_opener()

RESIZE_MODES = ("squash", "center-crop")  # see decode_image

# Refuse images above this many pixels (about 16k x 10k) instead of exhausting memory.
DEFAULT_MAX_PIXELS = 178_956_970

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image



def use_one_opencv_thread() -> None:
    """For a decode worker of ours (a Ray task's process), never the user's own process: OpenCV resizes on
    the calling thread only.

    One image is decoded at a time per thread that calls us, and jobs get their parallelism from Ray's
    tasks. OpenCV's own pool splits each 448x448 resize over every core and spins while it waits: on 2
    cores that took 2.5-2.7 core-ms an image against 1.6-1.8 on one thread, for no less wall time, CPU
    the predictors then lack.
    """
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


class ImageError(Exception):
    """An input that cannot become an image; ``str(err)`` is the message for the error column."""

    kind = "unreadable"

    def __str__(self) -> str:
        return f"{self.kind}: {self.args[0] if self.args else ''}".rstrip(": ")


class EmptyImageError(ImageError):
    kind = "empty file"


class NotAnImageError(ImageError):
    kind = "not an image"


class TruncatedImageError(ImageError):
    kind = "truncated or corrupt image"


class ImageTooLargeError(ImageError):
    kind = "image too large"


class UnreadableImageError(ImageError):
    kind = "unreadable"


class UnsupportedImageError(ImageError):
    kind = "unsupported image"


# Formats recognised by their first bytes when Pillow cannot open the file, so the error row names the
# format instead of calling a real image "not an image" (scikit-image's multipage_rgb.tif: float64 planar RGB).
_SIGNATURES = {
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"II+\x00": "BigTIFF", b"MM\x00+": "BigTIFF",
    b"\x00\x00\x00\x0cjP  ": "JPEG 2000", b"\xffO\xffQ": "JPEG 2000", b"8BPS": "Photoshop",
}


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class DecodeResult:
    image: np.ndarray | None  # (size, size, 3) uint8, or None on error
    error: str | None  # the ImageError text, or None


def decode_image(data: bytes, size: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS,
                 resize_mode: str = "squash") -> np.ndarray:
    """Decode ``data`` to an RGB uint8 array of shape (height, width, 3) = (*size, 3).

    ``resize_mode``: ``squash`` the whole image to ``size`` (nothing cropped away), or
    ``center-crop``: scale the shorter side to fit, then take the centre, as ImageNet models
    were evaluated.

    Baseline RGB and greyscale JPEGs (most photos) go through libjpeg-turbo with
    DCT-domain downscaling (simplejpeg); every other file, and any JPEG libjpeg-turbo
    refuses, through Pillow. Both paths apply EXIF orientation and end in the same
    antialiased resize (``_squash``). Raises an ``ImageError`` subclass for anything that is not a usable image.
    """
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
    if not data:
        raise EmptyImageError("the file has zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            if image.width * image.height > max_pixels:
                raise ImageTooLargeError(
                    f"{image.width}x{image.height} pixels exceeds the limit of {max_pixels}"
                )
            if image.format == "JPEG" and image.mode in ("RGB", "L"):
                pixels = _decode_jpeg_turbo(data, image.size, size, _orientation(image), resize_mode)
                if pixels is not None:
                    return pixels
            return _decode_with_pillow(image, size, resize_mode)
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        known = next((name for magic, name in _SIGNATURES.items() if data.startswith(magic)), None)
        if known:
            raise UnsupportedImageError(
                f"a {known} file whose layout Pillow cannot decode (e.g. floating-point, planar or "
                "many-channel samples); convert it to 8-bit RGB") from err
        raise NotAnImageError("no image format recognised") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLargeError(str(err)) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise TruncatedImageError(str(err) or type(err).__name__) from err
    except Exception as err:  # PIL plugins raise a zoo of types on hostile input
        raise UnreadableImageError(f"{type(err).__name__}: {err}") from err


def _orientation(image: Image.Image) -> int:
    try:
        value = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block means "upright", as viewers treat it
        return 1
    return value if value in _ORIENT else 1


def _decode_jpeg_turbo(data: bytes, stored: tuple[int, int], size: tuple[int, int], orientation: int,
                       mode: str) -> np.ndarray | None:
    """libjpeg-turbo at the smallest of its 1/8, 1/4, 1/2 and 1/1 scales still >= the target; None to
    fall back. ``stored`` is the file's (width, height).

    Only those four: libjpeg-turbo runs them on SIMD code, while its 3/8, 5/8, 6/8 and 7/8 IDCTs are
    plain C. A 500x375 photo decodes faster in full (0.8 ms) than at 5/8 (1.0 ms), and the pixels
    then come closer to an exact area average of the full image (``benchmarks/decode_speed.py``).
    """
    height, width = size
    if orientation >= 5:  # stored sideways: the stored height becomes the shown width
        height, width = width, height
    stored_width, stored_height = stored
    factor = 8
    while factor > 1 and (-(-stored_height // factor) < height or -(-stored_width // factor) < width):
        factor //= 2
    try:  # libjpeg-turbo rounds scaled sizes up, so asking for ceil(side / factor) selects 1/factor
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-stored_height // factor),
                                        min_width=-(-stored_width // factor))
    except ValueError:
        return None  # truncated, arithmetic-coded, ...: Pillow decides (and names the error)
    return _orient(resize(pixels, (height, width), mode), orientation)


def _decode_with_pillow(image: Image.Image, size: tuple[int, int], mode: str) -> np.ndarray:
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)  # animated: the first frame
    if image.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while still >= the target size.
        side = max(size)
        image.draft("RGB", (side, side))
    image = ImageOps.exif_transpose(image)
    return resize(np.asarray(_to_rgb(image), dtype=np.uint8), size, mode)


def resize(pixels: np.ndarray, size: tuple[int, int], mode: str = "squash") -> np.ndarray:
    """An (h, w, 3) uint8 array to ``size`` = (height, width) by ``mode`` (see ``decode_image``),
    antialiased when shrinking (no moire), bilinear when enlarging; see ``_squash``."""
    height, width = size
    if mode == "center-crop":
        scale = max(height / pixels.shape[0], width / pixels.shape[1])
        fitted = resize(pixels, (max(height, round(pixels.shape[0] * scale)),
                                 max(width, round(pixels.shape[1] * scale))))
        top, left = (fitted.shape[0] - height) // 2, (fitted.shape[1] - width) // 2
        return np.ascontiguousarray(fitted[top:top + height, left:left + width])
    if pixels.shape[:2] == (height, width):
        return np.ascontiguousarray(pixels)
    return _squash(pixels, height, width)


# Up to this shrink per side, the bilinear step onto the 2x grid shrinks by at most 1.25x, where
# bilinear barely aliases (benchmarks/decode_speed.py measures it on a zone plate).
TWO_STEP_MAX_SHRINK = 2.5


def _squash(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Shrink by a bilinear resize to twice the target, then an exact 2x2 area average.

    OpenCV's ``INTER_AREA`` at a fractional ratio (313 -> 224, say) is generic scalar code: 0.7-1 ms
    for a 224x224 output on this project's CPU, a third of a whole decode. Its bilinear resize and its
    2x2 area average are SIMD code: 0.3-0.5 ms together. The result is a box filter over each output
    pixel's footprint of a bilinear reconstruction: antialiased like an area average, a little
    softer. Larger shrinks (big PNGs, panoramas) use ``INTER_AREA`` itself.
    """
    shrink_y, shrink_x = pixels.shape[0] / height, pixels.shape[1] / width
    if shrink_y <= 1 and shrink_x <= 1:
        return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)  # nothing to alias
    if max(shrink_y, shrink_x) <= TWO_STEP_MAX_SHRINK:
        double = cv2.resize(pixels, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(double, (width, height), interpolation=cv2.INTER_AREA)
    if shrink_y >= 1 and shrink_x >= 1:
        return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
    # One side shrinks a lot while the other grows: area-average the first alone, then enlarge.
    if shrink_x > 1:
        pixels = cv2.resize(pixels, (width, pixels.shape[0]), interpolation=cv2.INTER_AREA)
    else:
        pixels = cv2.resize(pixels, (pixels.shape[1], height), interpolation=cv2.INTER_AREA)
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)


def decode_or_error(data: bytes | None, size: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS,
                    resize_mode: str = "squash") -> DecodeResult:
    """``decode_image`` for batch jobs: never raises, returns the image or the error text."""
    try:
        if data is None:
            raise UnreadableImageError("no bytes were read")
        return DecodeResult(decode_image(data, size, max_pixels, resize_mode), None)
    except ImageError as err:
        return DecodeResult(None, str(err))
    except Exception as err:  # noqa: BLE001 - a batch must survive any single input
        return DecodeResult(None, f"unreadable: {type(err).__name__}: {err}")


# EXIF orientation -> the numpy view that shows the image upright (as ``ImageOps.exif_transpose``).
EXIF_ORIENTATION = 0x0112
_ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),
}


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    return np.ascontiguousarray(_ORIENT[orientation](pixels))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: transparency over white, high bit depths scaled, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" and array.max(initial=0) > 255 else 255.0
        if image.mode == "F" and array.max(initial=0) <= 1.0:
            top = 1.0
        gray = np.clip(array * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
