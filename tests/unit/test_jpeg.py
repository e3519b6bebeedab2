"""The GIL-free JPEG path gives exactly Pillow's pixels: the same DCT scale, colours and EXIF
orientation, on real photos; and hands Pillow whatever it does not decode the same way."""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from skimage import data

from inference_engine import imaging, jpeg
from inference_engine.errors import ImageTooLarge, InvalidInput
from inference_engine.imaging import ImageLimits, decode_image
from tests.helpers import encode

LIMITS = ImageLimits()


@cache
def photos() -> dict[str, Image.Image]:
    return {
        "chelsea": Image.fromarray(data.chelsea()),  # 451x300
        "astronaut": Image.fromarray(data.astronaut()),  # 512x512
        "coffee": Image.fromarray(data.coffee()),  # 600x400
        "camera": Image.fromarray(data.camera()),  # 512x512 greyscale
    }


def with_pillow(
    payload: bytes, min_side: int | None, monkeypatch: pytest.MonkeyPatch
) -> npt.NDArray[np.uint8]:
    """What the decoder gave before the fast path: Pillow all the way."""
    with monkeypatch.context() as patch:
        patch.setattr(jpeg, "simplejpeg", None)
        return np.asarray(decode_image(payload, LIMITS, min_side=min_side))


def fast(payload: bytes, min_side: int | None) -> npt.NDArray[np.uint8]:
    size = jpeg.header(payload)
    assert size is not None
    image = jpeg.decode(payload, *size, min_side)
    assert image is not None, "the fast path declined a plain JPEG"
    return np.asarray(image)


@pytest.mark.parametrize("name", ["chelsea", "astronaut", "coffee", "camera"])
@pytest.mark.parametrize(
    ("size", "params"),
    [
        (None, {"quality": 90}),
        (None, {"quality": 75, "progressive": True}),
        ((1400, 700), {"quality": 85, "subsampling": 0}),  # 4:4:4
        ((2000, 1500), {"quality": 80, "subsampling": 1}),  # 4:2:2; 1/8 scale at 224
        ((701, 699), {"quality": 95}),  # Pillow's draft: 1/2 here, where libjpeg alone would pick 3/8
    ],
)
@pytest.mark.parametrize("min_side", [None, 224, 64])
def test_the_same_pixels_as_pillow(
    name: str, size: tuple[int, int] | None, params: dict[str, object], min_side: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    photo = photos()[name]
    payload = encode(photo.resize(size) if size else photo, "JPEG", **params)
    expected = with_pillow(payload, min_side, monkeypatch)
    got = fast(payload, min_side)
    assert got.shape == expected.shape and got.dtype == np.uint8
    assert np.array_equal(got, expected)
    assert np.array_equal(np.asarray(decode_image(payload, LIMITS, min_side=min_side)), expected)


def oriented(orientation: int, byte_order: str = "<") -> bytes:
    """A non-square photo as a JPEG whose EXIF says ``orientation``."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "inference-engine tests"  # another tag ahead of it in the IFD
    raw = exif.tobytes()
    if byte_order == ">":  # the same IFD written big-endian ("MM"), as some cameras do
        raw = b"Exif\x00\x00" + big_endian_ifd(orientation)
    return encode(photos()["chelsea"], "JPEG", quality=90, exif=raw)


def big_endian_ifd(orientation: int) -> bytes:
    entry = (0x0112).to_bytes(2, "big") + (3).to_bytes(2, "big") + (1).to_bytes(4, "big")
    entry += orientation.to_bytes(2, "big") + b"\x00\x00"
    return b"MM\x00\x2a" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big") + entry + b"\x00" * 4


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_exif_orientation_turns_the_image_as_pillow_does(
    orientation: int, byte_order: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = oriented(orientation, byte_order)
    assert jpeg.orientation(payload) == orientation
    expected = with_pillow(payload, 224, monkeypatch)
    got = fast(payload, 224)
    assert np.array_equal(got, expected)
    if orientation >= 5:  # a quarter turn: the 451x300 photo stands up
        assert got.shape[:2] == (451, 300)


def test_a_broken_or_missing_exif_block_means_upright() -> None:
    plain = encode(photos()["chelsea"], "JPEG", quality=90)
    assert jpeg.orientation(plain) == 1
    payload = oriented(6)
    start = payload.index(b"Exif\x00\x00")
    for cut in (start + 8, start + 14, start + 20):  # inside the TIFF header, the IFD, an entry
        assert jpeg.orientation(payload[:cut]) == 1
    assert jpeg.orientation(b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00XX\x00\x2a") == 1  # no byte order
    assert jpeg.orientation(b"\xff\xd8garbage") == 1


def test_what_it_does_not_decode_the_same_way_goes_to_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    cmyk = encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG")
    assert jpeg.header(cmyk) is None  # Pillow undoes Adobe's inverted CMYK; libjpeg alone does not
    assert np.asarray(decode_image(cmyk, LIMITS)).shape == (64, 64, 3)
    payload = encode(photos()["coffee"], "JPEG", quality=90)
    truncated = payload[: len(payload) // 2]
    size = jpeg.header(truncated)
    assert size == (600, 400)
    assert jpeg.decode(truncated, *size, None) is None  # a decoder warning: strict
    with pytest.raises(InvalidInput, match="truncated"):
        decode_image(truncated, LIMITS)  # Pillow's words, as before


def test_limits_are_checked_from_the_header_before_decoding() -> None:
    limits = ImageLimits(max_pixels=10_000)
    with pytest.raises(ImageTooLarge, match="451x300"):
        decode_image(encode(photos()["chelsea"], "JPEG"), limits)


@pytest.mark.parametrize(
    ("width", "height", "min_side", "scale"),
    [(640, 480, 224, 2), (4000, 3000, 224, 8), (701, 699, 224, 2), (447, 300, 224, 1), (100, 100, None, 1),
     (1000, 1000, 224, 4), (1000, 200, 224, 1)],
)  # fmt: skip
def test_the_draft_scale_is_pillows(width: int, height: int, min_side: int | None, scale: int) -> None:
    assert jpeg.draft_scale(width, height, min_side) == scale
    if min_side:
        image = Image.open(io.BytesIO(encode(Image.new("RGB", (width, height)), "JPEG")))
        image.draft("RGB", (min_side, min_side))
        assert image.size == (-(-width // scale), -(-height // scale))


def test_the_decoder_module_uses_the_fast_path_when_installed() -> None:
    assert jpeg.available()
    assert imaging.jpeg is jpeg
