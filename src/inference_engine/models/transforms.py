"""Image to tensor: resize the shorter side, centre-crop, normalise, CHW float32.

Runs in the worker pool; Pillow's resize and numpy's arithmetic release the GIL, so several
images are prepared in parallel while the model thread computes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

from inference_engine.models.base import PreprocessingConfig

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resize_and_crop(image: Image.Image, config: PreprocessingConfig) -> Image.Image:
    """Scale so the shorter side is ``config.resize``, then take the centre ``config.crop`` square."""
    width, height = image.size
    if config.resize_mode == "stretch":
        size = (config.resize, config.resize)
    else:
        scale = config.resize / min(width, height)
        size = (max(config.crop, round(width * scale)), max(config.crop, round(height * scale)))
    if size != image.size:
        # reducing_gap lets Pillow shrink big images in cheap integer steps first.
        image = image.resize(size, _FILTERS[config.interpolation], reducing_gap=3.0)
    left = (size[0] - config.crop) // 2
    top = (size[1] - config.crop) // 2
    return image.crop((left, top, left + config.crop, top + config.crop))


def to_chw_array(image: Image.Image, config: PreprocessingConfig) -> npt.NDArray[np.float32]:
    """Normalise an RGB image to a ``[3, crop, crop]`` float32 array (``[crop, crop, 3]`` for NHWC)."""
    pixels = np.asarray(resize_and_crop(image, config), dtype=np.float32)
    if config.channel_order == "bgr":
        pixels = pixels[:, :, ::-1]
    mean = np.asarray(config.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(config.std, dtype=np.float32)
    normalised = (pixels - mean) * inv_std
    if config.layout == "nhwc":
        return np.ascontiguousarray(normalised)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))
