"""Turn image bytes into a model's input: RGB uint8, oriented, resized. The only decoder.

Resizing squashes the whole image to the model's square size with bilinear
(antialiased) filtering, as Keras's ``load_img``/``image_dataset_from_directory``
do: nothing is cropped away (a label job must see the whole picture), and
fine-tuning and labeling see identical pixels because both call this module.
Every failure is an ``ImageError`` with a short reason a batch job stores in its
``error`` column; nothing else escapes ``decode_or_error``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Refuse images above this many pixels (about 16k x 10k) instead of exhausting memory.
DEFAULT_MAX_PIXELS = 178_956_970

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image


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


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class DecodeResult:
    image: np.ndarray | None  # (size, size, 3) uint8, or None on error
    error: str | None  # the ImageError text, or None


def decode_image(data: bytes, size: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``data`` to an RGB uint8 array of shape (height, width, 3) = (*size, 3).

    Raises an ``ImageError`` subclass for anything that is not a usable image.
    """
    if not data:
        raise EmptyImageError("the file has zero bytes")
    height, width = size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise ImageTooLargeError(
                    f"{image.width}x{image.height} pixels exceeds the limit of {max_pixels}"
                )
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # animated: the first frame
            if image.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while still >= the target size.
                side = max(height, width)
                image.draft("RGB", (side, side))
            image = ImageOps.exif_transpose(image)
            image = _to_rgb(image)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        raise NotAnImageError("no image format recognised") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLargeError(str(err)) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise TruncatedImageError(str(err) or type(err).__name__) from err
    except Exception as err:  # PIL plugins raise a zoo of types on hostile input
        raise UnreadableImageError(f"{type(err).__name__}: {err}") from err


def decode_or_error(data: bytes | None, size: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodeResult:
    """``decode_image`` for batch jobs: never raises, returns the image or the error text."""
    try:
        if data is None:
            raise UnreadableImageError("no bytes were read")
        return DecodeResult(decode_image(data, size, max_pixels), None)
    except ImageError as err:
        return DecodeResult(None, str(err))
    except Exception as err:  # noqa: BLE001 - a batch must survive any single input
        return DecodeResult(None, f"unreadable: {type(err).__name__}: {err}")


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
