"""JPEG decoding without the GIL: libjpeg-turbo through ``simplejpeg``, the same pixels as Pillow.

Pillow decodes a JPEG in C too, but opens it in Python: its marker and table parsing and its
load loop hold the GIL for a good part of a small photo's decode, and the event loop of a busy
server waits for it (``docs/PERFORMANCE.md``). ``simplejpeg`` reads the header and decodes in C
with the GIL released. This path reproduces what :func:`inference_engine.imaging.decode_image`
does with Pillow, pixel for pixel: the same DCT scale as Pillow's draft mode (1/2, 1/4 or 1/8 while
both sides stay at least ``min_side``), the same RGB conversion, and the EXIF orientation read
from the APP1 segment here. Anything it does not handle the same way (CMYK and YCCK, a header it
cannot read, a decoder warning: ``strict``) returns ``None`` and Pillow decodes it, so the errors
a client sees for a broken JPEG stay Pillow's.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

from PIL import Image

try:  # an optional speed-up: without it, Pillow decodes every JPEG
    import simplejpeg
except ImportError:  # pragma: no cover - installed with the server
    simplejpeg = None

#: EXIF orientation (tag 0x0112) -> the transpose that shows the image upright (Pillow's table).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length follows


def available() -> bool:
    return simplejpeg is not None


def header(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG this path decodes, or ``None`` (Pillow's to handle)."""
    if simplejpeg is None:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return (width, height) if colorspace in ("Gray", "YCbCr", "RGB") else None


def draft_scale(width: int, height: int, min_side: int | None) -> int:
    """The DCT scale Pillow's ``draft`` picks: the largest of 8, 4, 2, 1 that both sides allow."""
    if not min_side:
        return 1
    fits = min(width // min_side, height // min_side)
    return next((scale for scale in (8, 4, 2, 1) if fits >= scale), 1)


def decode(data: bytes, width: int, height: int, min_side: int | None) -> Image.Image | None:
    """The upright RGB image of a JPEG whose :func:`header` said ``width`` x ``height``.

    ``None`` when libjpeg-turbo warns or fails (a truncated or corrupt file): Pillow decodes it
    and words the error.
    """
    assert simplejpeg is not None
    scale = draft_scale(width, height, min_side)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # strict=True turns libjpeg's warnings into errors
            pixels: Any = simplejpeg.decode_jpeg(
                data,
                colorspace="RGB",
                fastdct=False,
                fastupsample=False,
                min_height=-(-height // scale),
                min_width=-(-width // scale),
                strict=True,
            )
    except ValueError:
        return None
    image = Image.fromarray(pixels)  # (height, width, 3) uint8: RGB
    turn = _UPRIGHT.get(orientation(data))
    return image.transpose(turn) if turn is not None else image


def orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) in a JPEG's APP1 segment; 1 when there is none or it is broken
    (a broken EXIF block never rejects an image that decodes)."""
    with contextlib.suppress(IndexError, ValueError):
        position = 2
        while position + 4 <= len(data):
            if data[position] != 0xFF:
                return 1
            marker = data[position + 1]
            if marker == 0xFF:  # fill byte
                position += 1
                continue
            if marker in _STANDALONE_MARKERS:
                position += 2
                continue
            if marker in (0xDA, 0xD9):  # start of scan, end of image: no EXIF before the pixels
                return 1
            length = int.from_bytes(data[position + 2 : position + 4], "big")
            segment = data[position + 4 : position + 2 + length]
            if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
                return _tiff_orientation(segment[6:])
            position += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None:
        return 1
    endian: Any = order
    first = int.from_bytes(tiff[4:8], endian)
    entries = int.from_bytes(tiff[first : first + 2], endian)
    for index in range(entries):
        entry = tiff[first + 2 + 12 * index : first + 14 + 12 * index]
        if len(entry) < 12:
            return 1
        if int.from_bytes(entry[0:2], endian) == _ORIENTATION_TAG:
            value = int.from_bytes(entry[8:10], endian)
            return value if 1 <= value <= 8 else 1
    return 1
