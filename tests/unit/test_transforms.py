"""Image to tensor: resize the shorter side, centre-crop, normalise to CHW float32."""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from skimage import data

from inference_engine.models.base import PreprocessingConfig
from inference_engine.models.transforms import resize_and_crop, to_chw_array

DEFAULT = PreprocessingConfig()  # resize 256, crop 224, bicubic, mean 127, std 128


@cache
def chelsea() -> Image.Image:
    return Image.fromarray(data.chelsea())  # 451x300, landscape


def constant(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", size, colour)


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("landscape", chelsea()),
        ("portrait", chelsea().transpose(Image.Transpose.ROTATE_90)),
        ("square", Image.fromarray(data.astronaut())),
        ("exactly-resize", chelsea().crop((0, 0, 256, 300))),
        ("tiny", chelsea().resize((20, 12))),
        ("one-pixel", chelsea().crop((200, 150, 201, 151))),
        ("panorama", chelsea().resize((600, 20))),
    ],
)
@pytest.mark.parametrize(
    "config",
    [
        DEFAULT,
        PreprocessingConfig(resize=40, crop=32, interpolation="bilinear"),
        PreprocessingConfig(crop=256),
    ],
    ids=["default", "small", "crop=resize"],
)
def test_resize_and_crop_gives_a_crop_square(
    name: str, image: Image.Image, config: PreprocessingConfig
) -> None:
    out = resize_and_crop(image, config)
    assert out.mode == "RGB"
    assert out.size == (config.crop, config.crop)


def test_crop_is_centred_when_no_resize_is_needed() -> None:
    """Shorter side already 256: the image is only cropped, at (16, 88) for a 256x400 input."""
    photo = Image.fromarray(data.astronaut()).crop((100, 50, 356, 450))
    assert photo.size == (256, 400)
    out = resize_and_crop(photo, DEFAULT)
    assert np.array_equal(np.asarray(out), np.asarray(photo)[88:312, 16:240])


@pytest.mark.parametrize(
    ("size", "box"),
    [((300, 200), (50, 0, 250, 200)), ((200, 300), (0, 50, 200, 250))],
    ids=["landscape", "portrait"],
)
def test_resize_scales_the_shorter_side_then_centres(
    size: tuple[int, int], box: tuple[int, int, int, int]
) -> None:
    """A sharp coloured square in the middle ends up filling the whole crop exactly."""
    canvas = Image.new("RGB", size, (0, 0, 255))
    canvas.paste((255, 0, 0), box)
    config = PreprocessingConfig(resize=100, crop=100, interpolation="nearest")
    out = np.asarray(resize_and_crop(canvas, config))
    assert out.shape == (100, 100, 3)
    assert (out == (255, 0, 0)).all()


def test_interpolation_setting_is_used() -> None:
    """Nearest-neighbour 2x upscaling repeats every pixel into a 2x2 block; bicubic does not."""
    patch = np.asarray(data.astronaut())[:128, :128]
    repeated = patch.repeat(2, axis=0).repeat(2, axis=1)
    nearest = resize_and_crop(Image.fromarray(patch), PreprocessingConfig(crop=256, interpolation="nearest"))
    bicubic = resize_and_crop(Image.fromarray(patch), PreprocessingConfig(crop=256, interpolation="bicubic"))
    assert np.array_equal(np.asarray(nearest), repeated)
    assert not np.array_equal(np.asarray(bicubic), repeated)


def test_resize_and_crop_leaves_the_input_untouched() -> None:
    image = chelsea().copy()
    resize_and_crop(image, DEFAULT)
    assert image.size == (451, 300)
    assert np.array_equal(np.asarray(image), data.chelsea())


@pytest.mark.parametrize(
    "config",
    [DEFAULT, PreprocessingConfig(resize=40, crop=32)],
    ids=["default", "small"],
)
def test_to_chw_array_shape_dtype_and_layout(config: PreprocessingConfig) -> None:
    array = to_chw_array(chelsea(), config)
    assert array.shape == (3, config.crop, config.crop)
    assert array.dtype == np.float32
    assert array.flags.c_contiguous


def test_to_chw_array_matches_the_cropped_photo_normalised() -> None:
    array = to_chw_array(chelsea(), DEFAULT)
    crop = np.asarray(resize_and_crop(chelsea(), DEFAULT)).astype(np.float32)
    expected: npt.NDArray[np.float32] = ((crop - 127.0) / 128.0).transpose(2, 0, 1)
    np.testing.assert_allclose(array, expected, rtol=0, atol=1e-6)
    assert array.min() >= -127 / 128
    assert array.max() <= 1.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [(255, 1.0), (127, 0.0), (0, -0.9921875), (191, 0.5)],
)
@pytest.mark.parametrize("size", [(224, 224), (256, 256), (640, 480), (10, 30)])
def test_normalisation_is_exact_for_a_constant_image(
    value: int, expected: float, size: tuple[int, int]
) -> None:
    array = to_chw_array(constant(size, (value, value, value)), DEFAULT)
    assert np.array_equal(array, np.full((3, 224, 224), expected, np.float32))


def test_channel_order_is_preserved() -> None:
    array = to_chw_array(constant((300, 400), (255, 0, 0)), DEFAULT)
    assert (array[0] == 1.0).all()
    assert (array[1] == -127 / 128).all()
    assert (array[2] == -127 / 128).all()


def test_per_channel_mean_and_std() -> None:
    config = PreprocessingConfig(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0))
    array = to_chw_array(constant((224, 224), (110, 120, 130)), config)
    assert array[:, 0, 0].tolist() == [50.0, 25.0, 12.5]
    assert np.array_equal(array, np.broadcast_to(array[:, :1, :1], array.shape))
