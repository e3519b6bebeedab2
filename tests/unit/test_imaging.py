"""Decoding untrusted bytes: format sniffing, mode conversion, limits and error mapping."""

from __future__ import annotations

import io
import struct
import zlib
from functools import cache

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageFile
from skimage import data

from inference_engine import imaging
from inference_engine.errors import ImageTooLarge, ImageTooSmall, InvalidInput, UnsupportedMediaType
from inference_engine.imaging import SUPPORTED_FORMATS, ImageLimits, decode_image, sniff_format, to_rgb
from tests.helpers import encode

LIMITS = ImageLimits()
CHELSEA_SIZE = (451, 300)  # (width, height) of skimage's cat photo


@cache
def chelsea() -> npt.NDArray[np.uint8]:
    return np.asarray(data.chelsea())


@cache
def camera() -> npt.NDArray[np.uint8]:
    """A 512x512 greyscale photo whose values span exactly 0..255."""
    return np.asarray(data.camera())


@cache
def big_jpeg() -> bytes:
    """A 4000x3000 JPEG of the astronaut photo, for draft-mode decoding."""
    return encode(Image.fromarray(data.astronaut()).resize((4000, 3000)), "JPEG", quality=80)


def pixels(image: Image.Image) -> npt.NDArray[np.int64]:
    return np.asarray(image).astype(np.int64)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` RGB pixels, with no pixel data at all.

    Cheap to build at any size; decoding it fully fails as truncated, so an ImageTooLarge proves
    the dimensions were checked from the header alone.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


# --- sniff_format ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_sniff_format_recognises_each_supported_format(fmt: str) -> None:
    assert sniff_format(encode(chelsea(), fmt)) == fmt


def test_sniff_format_recognises_big_endian_tiff() -> None:
    assert sniff_format(b"MM\x00*\x00\x00\x00\x08" + b"\x00" * 16) == "TIFF"


def test_sniff_format_ignores_the_claimed_file_type() -> None:
    """A PNG is a PNG even if it would have been uploaded as ``cat.jpg``."""
    assert sniff_format(encode(chelsea(), "PNG")) == "PNG"
    assert sniff_format(encode(chelsea(), "JPEG")) == "JPEG"


def test_sniff_format_rejects_empty_bytes_as_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="empty") as info:
        sniff_format(b"")
    assert type(info.value) is InvalidInput
    assert info.value.status_code == 422
    assert info.value.code == "invalid_input"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"hello, this is plain text and not an image\n", id="text"),
        pytest.param(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", id="pdf"),
        pytest.param(b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 20, id="zip"),
        pytest.param(b'{"image": "cat.jpg"}', id="json"),
        pytest.param(b"\xff\xd8", id="jpeg-magic-cut-short"),
        pytest.param(b"\x00", id="single-byte"),
    ],
)
def test_sniff_format_rejects_non_images_as_unsupported_media_type(payload: bytes) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        sniff_format(payload)
    assert info.value.status_code == 415
    assert info.value.code == "unsupported_media_type"
    for fmt in SUPPORTED_FORMATS:
        assert fmt in info.value.message


def test_decode_image_sniffs_before_decoding() -> None:
    with pytest.raises(UnsupportedMediaType):
        decode_image(b"%PDF-1.4\n" + b"\x00" * 100, LIMITS)
    with pytest.raises(InvalidInput, match="empty"):
        decode_image(b"", LIMITS)


# --- round trips per format -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "max_mean_error"),
    [
        ("PNG", {}, 0.0),
        ("BMP", {}, 0.0),
        ("TIFF", {}, 0.0),
        ("WEBP", {"lossless": True}, 0.0),
        ("WEBP", {"quality": 90}, 4.0),
        ("JPEG", {"quality": 95}, 3.0),
        ("GIF", {}, 5.0),
    ],
)
def test_decode_image_returns_the_rgb_photo_for_each_format(
    fmt: str, params: dict[str, object], max_mean_error: float
) -> None:
    image = decode_image(encode(chelsea(), fmt, **params), LIMITS)
    assert image.mode == "RGB"
    assert image.size == CHELSEA_SIZE
    error = np.abs(pixels(image) - chelsea()).mean()
    assert error <= max_mean_error


def test_decode_image_handles_a_second_real_photo_file() -> None:
    """skimage's motorcycle photo, re-encoded from its PNG file as a progressive JPEG."""
    with Image.open(f"{data.data_dir}/motorcycle_left.png") as source:
        original = source.convert("RGB")
    image = decode_image(encode(original, "JPEG", quality=95, progressive=True), LIMITS)
    assert image.mode == "RGB"
    assert image.size == (741, 500)
    assert np.abs(pixels(image) - pixels(original)).mean() < 3.0


# --- mode conversion ------------------------------------------------------------------------


def test_decode_greyscale_l_replicates_grey_into_three_channels() -> None:
    image = decode_image(encode(camera(), "PNG"), LIMITS)
    assert image.mode == "RGB"
    rgb = pixels(image)
    for channel in range(3):
        assert np.array_equal(rgb[..., channel], camera())


def test_decode_la_composites_transparent_pixels_onto_white() -> None:
    grey = Image.fromarray(camera())
    alpha = np.full(camera().shape, 255, np.uint8)
    alpha[:100, :100] = 0
    la = Image.merge("LA", (grey, Image.fromarray(alpha)))
    payload = encode(la, "PNG")
    assert Image.open(io.BytesIO(payload)).mode == "LA"

    rgb = pixels(decode_image(payload, LIMITS))
    assert (rgb[:100, :100] == 255).all()
    assert np.array_equal(rgb[200:, 200:, 0], camera()[200:, 200:])


def test_decode_palette_without_transparency() -> None:
    palette = Image.fromarray(chelsea()).quantize(16)
    payload = encode(palette, "PNG")
    reopened = Image.open(io.BytesIO(payload))
    assert reopened.mode == "P"
    assert "transparency" not in reopened.info

    image = decode_image(payload, LIMITS)
    assert image.mode == "RGB"
    assert np.array_equal(pixels(image), pixels(palette.convert("RGB")))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_decode_palette_with_transparency_composites_onto_white(fmt: str) -> None:
    palette = Image.fromarray(chelsea()).quantize(16)
    indices = np.asarray(palette)
    transparent = int(indices[0, 0])
    payload = encode(palette, fmt, transparency=transparent)
    reopened = Image.open(io.BytesIO(payload))
    assert reopened.mode == "P"
    assert reopened.info["transparency"] == transparent

    rgb = pixels(decode_image(payload, LIMITS))
    opaque_colours = pixels(palette.convert("RGB"))
    hidden = indices == transparent
    assert 0 < hidden.sum() < hidden.size
    assert (rgb[hidden] == 255).all()
    assert np.array_equal(rgb[~hidden], opaque_colours[~hidden])


@pytest.mark.parametrize(("fmt", "params"), [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {})])
def test_decode_rgba_composites_transparency_onto_white(fmt: str, params: dict[str, object]) -> None:
    photo = np.asarray(data.astronaut())
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    alpha[:100, :100] = 0  # fully transparent corner
    alpha[100:200, :100] = 128  # half transparent band
    payload = encode(np.dstack([photo, alpha]), fmt, **params)

    image = decode_image(payload, LIMITS)
    assert image.mode == "RGB"
    rgb = pixels(image)
    assert (rgb[:100, :100] == 255).all()
    expected_half = photo[100:200, :100] * (128 / 255) + 255 * (127 / 255)
    assert np.abs(rgb[100:200, :100] - expected_half).max() <= 1.0
    assert np.array_equal(rgb[200:, 100:], photo[200:, 100:])


def test_decode_cmyk_jpeg_converts_to_rgb() -> None:
    cmyk = Image.fromarray(chelsea()).convert("CMYK")
    payload = encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(payload)).mode == "CMYK"

    image = decode_image(payload, LIMITS)
    assert image.mode == "RGB"
    assert image.size == CHELSEA_SIZE
    assert np.abs(pixels(image) - pixels(cmyk.convert("RGB"))).mean() < 3.0


@pytest.mark.parametrize(
    ("cmyk", "rgb"),
    [((0, 0, 0, 0), (255, 255, 255)), ((0, 255, 255, 0), (255, 0, 0)), ((0, 0, 0, 255), (0, 0, 0))],
)
def test_decode_cmyk_tiff_colours(cmyk: tuple[int, int, int, int], rgb: tuple[int, int, int]) -> None:
    image = decode_image(encode(Image.new("CMYK", (16, 16), cmyk), "TIFF"), LIMITS)
    assert image.mode == "RGB"
    assert image.getpixel((7, 7)) == rgb


def _assert_rescaled_camera(image: Image.Image) -> None:
    """The camera photo spans 0..255, so stretching any affine copy of it back gives it again."""
    assert image.mode == "RGB"
    assert image.size == (512, 512)
    rgb = pixels(image)
    assert rgb.min() == 0
    assert rgb.max() == 255
    assert np.array_equal(rgb[..., 0], rgb[..., 1])
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    assert np.abs(rgb[..., 0] - camera()).max() <= 1


def test_decode_16_bit_png_scales_its_range_to_0_255() -> None:
    deep = camera().astype(np.uint16) * 200 + 1000  # 1000..52000
    payload = encode(Image.fromarray(deep), "PNG")
    assert Image.open(io.BytesIO(payload)).mode in ("I;16", "I")
    _assert_rescaled_camera(decode_image(payload, LIMITS))


def test_decode_32_bit_integer_tiff_scales_its_range_to_0_255() -> None:
    deep = camera().astype(np.int32) * 1000 - 100_000  # negative to positive
    payload = encode(Image.fromarray(deep), "TIFF")
    assert Image.open(io.BytesIO(payload)).mode == "I"
    _assert_rescaled_camera(decode_image(payload, LIMITS))


def test_decode_float_tiff_scales_its_range_to_0_255() -> None:
    deep = camera().astype(np.float32) / 127.5 - 1.0  # -1.0..1.0
    payload = encode(Image.fromarray(deep), "TIFF")
    assert Image.open(io.BytesIO(payload)).mode == "F"
    _assert_rescaled_camera(decode_image(payload, LIMITS))


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_decode_one_bit_image_gives_black_and_white(fmt: str) -> None:
    bilevel = Image.fromarray(camera()).convert("1")
    payload = encode(bilevel, fmt)
    assert Image.open(io.BytesIO(payload)).mode == "1"

    rgb = pixels(decode_image(payload, LIMITS))
    assert set(np.unique(rgb).tolist()) == {0, 255}
    assert np.array_equal(rgb[..., 1], pixels(bilevel.convert("L")))


def test_to_rgb_returns_rgb_images_unchanged() -> None:
    image = Image.fromarray(chelsea())
    assert to_rgb(image) is image


@pytest.mark.parametrize(
    ("image", "key"),
    [
        pytest.param(Image.fromarray(np.full((32, 32), 10, np.uint8)), 10, id="L"),
        pytest.param(Image.new("RGB", (32, 32), (10, 20, 30)), (10, 20, 30), id="RGB"),
    ],
)
def test_decode_colour_key_transparency_composites_onto_white(
    image: Image.Image, key: int | tuple[int, int, int]
) -> None:
    payload = encode(image, "PNG", transparency=key)
    assert Image.open(io.BytesIO(payload)).info["transparency"] == key
    assert decode_image(payload, LIMITS).getpixel((5, 5)) == (255, 255, 255)


# --- frames and orientation -----------------------------------------------------------------


def test_animated_gif_decodes_its_first_frame() -> None:
    first = Image.new("RGB", (32, 32), (255, 0, 0))
    second = Image.new("RGB", (32, 32), (0, 0, 255))
    buffer = io.BytesIO()
    first.save(buffer, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 2

    image = decode_image(buffer.getvalue(), LIMITS)
    assert image.mode == "RGB"
    assert image.size == (32, 32)
    assert (pixels(image) == (255, 0, 0)).all()


@pytest.mark.parametrize(
    ("orientation", "transpose", "size"),
    [
        (3, Image.Transpose.ROTATE_180, (451, 300)),
        (6, Image.Transpose.ROTATE_270, (300, 451)),
        (8, Image.Transpose.ROTATE_90, (300, 451)),
    ],
)
def test_decode_applies_exif_orientation(
    orientation: int, transpose: Image.Transpose, size: tuple[int, int]
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = encode(chelsea(), "JPEG", quality=90, exif=exif.tobytes())
    stored = Image.open(io.BytesIO(payload)).convert("RGB")
    assert stored.size == CHELSEA_SIZE

    image = decode_image(payload, LIMITS)
    assert image.size == size
    assert np.array_equal(pixels(image), pixels(stored.transpose(transpose)))


def test_decode_survives_a_failing_exif_transpose(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken EXIF block must not reject an otherwise decodable image."""

    def broken(image: Image.Image) -> Image.Image:
        raise SyntaxError("corrupt EXIF")

    monkeypatch.setattr(imaging.ImageOps, "exif_transpose", broken)
    image = decode_image(encode(chelsea(), "PNG"), LIMITS)
    assert image.mode == "RGB"
    assert np.array_equal(pixels(image), chelsea())


# --- corrupt input --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_invalid_input(fmt: str) -> None:
    payload = encode(chelsea(), fmt)
    with pytest.raises(InvalidInput) as info:
        decode_image(payload[: len(payload) // 2], LIMITS)
    assert type(info.value) is InvalidInput
    assert info.value.status_code == 422
    assert info.value.code == "invalid_input"
    assert "truncated" in info.value.message
    assert fmt in info.value.message


@pytest.mark.parametrize(
    ("fmt", "payload", "detail"),
    [
        ("JPEG", b"\xff\xd8\xff" + b"\x00" * 64, "header cannot be read"),
        ("PNG", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "header cannot be read"),
        ("WEBP", b"RIFF\x00\x00\x00\x00WEBP" + b"\x00" * 64, "header cannot be read"),
        ("GIF", b"GIF89a" + b"\x00" * 4, "header cannot be read"),
        ("TIFF", b"II*\x00" + b"\x00" * 64, "header cannot be read"),
        # Pillow's BMP reader raises its own OSError naming the problem.
        ("BMP", b"BM" + b"\x00" * 64, "corrupt or truncated: Unsupported BMP header"),
    ],
)
def test_garbage_after_magic_bytes_is_invalid_input(fmt: str, payload: bytes, detail: str) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_image(payload, LIMITS)
    assert type(info.value) is InvalidInput
    assert info.value.status_code == 422
    assert info.value.message.startswith(f"the {fmt} image is corrupt")
    assert detail in info.value.message


# --- limits ---------------------------------------------------------------------------------


def test_pixel_cap_is_checked_from_the_header_alone() -> None:
    """9000x9000 is under Pillow's own bomb limit but over the 40 Mpx cap; no pixel data exists."""
    with pytest.raises(ImageTooLarge) as info:
        decode_image(png_header_only(9000, 9000), LIMITS)
    assert info.value.status_code == 422
    assert info.value.code == "image_too_large"
    assert "81000000 pixels" in info.value.message
    assert "40000000" in info.value.message


def test_header_only_png_within_limits_fails_as_truncated() -> None:
    """Control for the test above: the same kind of file, small enough, does reach decoding."""
    with pytest.raises(InvalidInput, match="truncated"):
        decode_image(png_header_only(100, 100), LIMITS)


class _DecodedError(Exception):
    """Raised by the patched loader: pixels were decoded."""


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(self: ImageFile.ImageFile) -> None:
        raise _DecodedError

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.mark.usefixtures("no_pixel_decoding")
@pytest.mark.parametrize(
    "limits",
    [
        pytest.param(ImageLimits(max_pixels=100_000), id="max_pixels"),
        pytest.param(ImageLimits(max_width=450), id="max_width"),
        pytest.param(ImageLimits(max_height=299), id="max_height"),
    ],
)
def test_limits_refuse_before_any_pixel_is_decoded(limits: ImageLimits) -> None:
    with pytest.raises(ImageTooLarge):
        decode_image(encode(chelsea(), "PNG"), limits)


@pytest.mark.usefixtures("no_pixel_decoding")
def test_patched_loader_is_reached_when_limits_allow() -> None:
    """Control: proves the patch in the test above would catch a decode."""
    with pytest.raises(_DecodedError):
        decode_image(encode(chelsea(), "PNG"), LIMITS)


@pytest.mark.parametrize(("width", "height"), [(20_000, 10), (10, 20_000)])
def test_side_longer_than_max_is_too_large(width: int, height: int) -> None:
    with pytest.raises(ImageTooLarge, match="largest accepted is 16384x16384") as info:
        decode_image(png_header_only(width, height), LIMITS)
    assert info.value.code == "image_too_large"
    assert f"{width}x{height}" in info.value.message


def test_image_exactly_at_the_limits_is_accepted() -> None:
    limits = ImageLimits(max_pixels=451 * 300, max_width=451, max_height=300, min_width=451, min_height=300)
    assert decode_image(encode(chelsea(), "PNG"), limits).size == CHELSEA_SIZE


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param(ImageLimits(min_width=452), id="min_width"),
        pytest.param(ImageLimits(min_height=301), id="min_height"),
    ],
)
def test_side_shorter_than_min_is_too_small(limits: ImageLimits) -> None:
    with pytest.raises(ImageTooSmall) as info:
        decode_image(encode(chelsea(), "PNG"), limits)
    assert info.value.status_code == 422
    assert info.value.code == "image_too_small"
    assert "451x300" in info.value.message


def test_tiny_real_crop_is_too_small_under_default_limits() -> None:
    with pytest.raises(ImageTooSmall, match=r"7x7; the smallest accepted is 8x8"):
        decode_image(encode(chelsea()[100:107, 200:207], "PNG"), LIMITS)
    assert decode_image(encode(chelsea()[100:108, 200:208], "PNG"), LIMITS).size == (8, 8)


@pytest.mark.parametrize(
    "max_image_pixels",
    [
        pytest.param(100_000, id="warning"),  # 135300 px: over the limit, under twice it
        pytest.param(50_000, id="error"),  # over twice the limit
    ],
)
def test_pillow_decompression_bomb_is_image_too_large(
    monkeypatch: pytest.MonkeyPatch, max_image_pixels: int
) -> None:
    payload = encode(chelsea(), "PNG")  # loading the photo itself goes through Pillow: do it first
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", max_image_pixels)
    with pytest.raises(ImageTooLarge, match="decompression bomb") as info:
        decode_image(payload, LIMITS)
    assert info.value.code == "image_too_large"
    assert info.value.status_code == 422


def test_huge_header_beyond_pillow_bomb_limit_is_image_too_large() -> None:
    with pytest.raises(ImageTooLarge, match="decompression bomb"):
        decode_image(png_header_only(20_000, 20_000), ImageLimits(max_pixels=10**9, max_width=10**6))


# --- JPEG draft mode ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_side", "size"),
    [(256, (500, 375)), (1000, (2000, 1500)), (3000, (4000, 3000)), (None, (4000, 3000))],
)
def test_jpeg_draft_mode_reduces_scale_but_keeps_min_side(
    min_side: int | None, size: tuple[int, int]
) -> None:
    image = decode_image(big_jpeg(), LIMITS, min_side=min_side)
    assert image.mode == "RGB"
    assert image.size == size
    if min_side is not None:
        assert min(image.size) >= min_side


def test_draft_decoded_jpeg_still_shows_the_photo() -> None:
    small = decode_image(big_jpeg(), LIMITS, min_side=256)
    full = decode_image(big_jpeg(), LIMITS).resize(small.size, Image.Resampling.BOX)
    assert np.abs(pixels(small) - pixels(full)).mean() < 4.0


def test_min_side_does_not_shrink_other_formats() -> None:
    assert decode_image(encode(chelsea(), "PNG"), LIMITS, min_side=32).size == CHELSEA_SIZE


@pytest.mark.parametrize(("value", "expected"), [(65535, 255), (0, 0), (32896, 128)])
def test_flat_16_bit_image_keeps_its_brightness(value: int, expected: int) -> None:
    flat = Image.fromarray(np.full((16, 16), value, dtype=np.uint16))
    decoded = decode_image(encode(flat, "PNG"), ImageLimits())
    assert decoded.getpixel((3, 3)) == (expected, expected, expected)
