"""Turn untrusted bytes into a safe RGB image, or a precise 4xx error.

Order matters for safety and speed: sniff the magic bytes (never trust ``Content-Type``), read
only the header to check dimensions against the limits (so a decompression bomb is refused
before any pixel is decoded), let JPEG decode at a reduced scale when the model needs less,
then decode, apply EXIF orientation and convert every mode to 8-bit RGB.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from inference_engine.errors import ImageTooLarge, ImageTooSmall, InvalidInput, UnsupportedMediaType
from inference_engine.settings import ImageSettings

#: Formats accepted, by the name Pillow gives them.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


#: The decoder's bounds are the ``images`` section of the configuration, one type for both.
ImageLimits = ImageSettings


def sniff_format(data: bytes) -> str:
    """Name the image format from its magic bytes; 415 for anything else."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if not data:
        raise InvalidInput("the request carries no image: the body or file is empty")
    raise UnsupportedMediaType(
        "the payload is not a supported image (accepted: " + ", ".join(SUPPORTED_FORMATS) + ")"
    )


def _check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
        )
    if width > limits.max_width or height > limits.max_height:
        raise ImageTooLarge(
            f"image is {width}x{height}; the largest accepted is {limits.max_width}x{limits.max_height}"
        )
    if width < limits.min_width or height < limits.min_height:
        raise ImageTooSmall(
            f"image is {width}x{height}; the smallest accepted is {limits.min_width}x{limits.min_height}"
        )


def decode_image(data: bytes, limits: ImageLimits, *, min_side: int | None = None) -> Image.Image:
    """Decode ``data`` to an RGB image, enforcing ``limits``.

    ``min_side`` lets JPEG decode at 1/2, 1/4 or 1/8 scale (draft mode) as long as both sides
    stay at least that long; the model resizes to its own input size afterwards anyway.
    """
    fmt = sniff_format(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=[fmt])
            _check_dimensions(image.width, image.height, limits)
            if fmt == "JPEG" and min_side:
                image.draft("RGB", (min_side, min_side))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise InvalidInput(f"the {fmt} image is corrupt: its header cannot be read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(f"the {fmt} image is corrupt or truncated: {exc}") from None
    # A broken EXIF block must not reject an otherwise decodable image. In place: the image is
    # ours, and the default (a new image) copies every pixel even when there is nothing to turn.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _high_depth_to_rgb(image)
    if mode in ("P", "L", "RGB") and "transparency" in image.info:  # palette entry or colour key
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """Scale 16-bit or float greyscale into 0..255 by its own range (what a viewer shows)."""
    array = np.asarray(image, dtype=np.float32)
    low, high = float(array.min()), float(array.max())
    if high > low:
        grey = ((array - low) * (255.0 / (high - low))).clip(0, 255).astype(np.uint8)
    else:  # a flat image has no range of its own: place it on the mode's nominal scale
        nominal = 1.0 if image.mode == "F" else 65535.0
        grey = np.full(array.shape, np.clip(low / nominal * 255.0, 0, 255), dtype=np.uint8)
    return Image.fromarray(grey).convert("RGB")
