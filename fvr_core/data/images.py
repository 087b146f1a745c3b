"""Decoding any image a user may hand us into the RGB uint8 array the models see.

The same functions prepare training images for the cache and outside photos for prediction, so
both sides of a model see identically processed pixels.
"""

from __future__ import annotations

import base64
import io
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A 30000x30000 image is 2.7 GB decoded; refuse anything over this many pixels before decoding.
MAX_IMAGE_PIXELS = 60_000_000
# Pillow's own guard stays as a backstop far above ours; its warning is replaced by our check in _open
Image.MAX_IMAGE_PIXELS = 4 * MAX_IMAGE_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

ImageSource = Union[str, Path, bytes, BinaryIO]


class ImageError(ValueError):
    """An image could not be used; the message says why in words a user understands."""


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError("file not found")
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        source = path
    elif isinstance(source, bytes):
        if not source:
            raise ImageError("empty file (0 bytes)")
        source = io.BytesIO(source)
    try:
        img = Image.open(source)  # reads the header only: nothing is decoded yet
    except Image.DecompressionBombError:
        raise ImageError(f"image too large (over {MAX_IMAGE_PIXELS:,} pixels); refused before decoding") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (the file's contents are no format Pillow can read)") from None
    except OSError as exc:
        raise ImageError(f"unreadable file ({exc})") from None
    # our own check (not Pillow's warning, whose filters are process-wide and unsafe across threads)
    if img.width * img.height > MAX_IMAGE_PIXELS:
        img.close()
        raise ImageError(f"image too large ({img.width}x{img.height}, over {MAX_IMAGE_PIXELS:,} pixels); refused before decoding")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode (grey, 16-bit, palette, alpha, CMYK) to 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float greys: scale to 8 bits rather than clip, as Pillow's convert() would
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # transparent pixels become white, as a viewer shows them, instead of their hidden colour
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def load_rgb(source: ImageSource) -> Image.Image:
    """Open, fully decode, apply EXIF rotation and convert to RGB. Raises ImageError with the reason."""
    img = _open(source)
    try:
        if getattr(img, "is_animated", False):
            img.seek(0)  # an animated GIF/WebP is judged by its first frame
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = to_rgb(img)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason:
            reason = "truncated file (the image data ends early)"
        raise ImageError(f"cannot decode image: {reason}") from None
    if min(rgb.size) < 1:
        raise ImageError(f"image has no pixels ({rgb.size[0]}x{rgb.size[1]})")
    return rgb


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to `size` and cut the centre square: never stretches a face."""
    width, height = img.size
    if (width, height) == (size, size):
        return img
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    # resample only the centre square (its box in the photo's own pixels), never the whole scaled
    # photo: a 1x20000 px image of a few hundred bytes was first scaled to 300x6,000,000 (gigabytes)
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def prepare_image(source: ImageSource | Image.Image, size: int) -> np.ndarray:
    """Any image source -> (3, size, size) uint8 array, channel first."""
    img = source if isinstance(source, Image.Image) else load_rgb(source)
    img = resize_center_crop(to_rgb(img), size)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def thumbnail_data_uri(img: Image.Image, size: int = 96) -> str:
    """A small PNG of `img` as a data URI (image columns of a table take these)."""
    thumb = img.copy()
    thumb.thumbnail((size, size))
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
