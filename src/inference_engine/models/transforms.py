"""Image to tensor: resize the shorter side, centre-crop, normalise, CHW float32.

Runs in the worker pool; Pillow's resize and numpy's arithmetic release the GIL, so several
images are prepared in parallel while the model thread computes.

Two things keep it cheap (it is most of a request's CPU for small models; see
docs/PERFORMANCE.md): only the part of the image that survives the crop is resampled (Pillow's
``box``: same sampling positions and filter support as resizing the whole image and then
cropping, about 40% less work for a 4:3 photo), and normalisation is one pass from the uint8
pixels into the final float32 layout, with no intermediate arrays.
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
    """Scale so the shorter side is ``config.resize``, then take the centre ``config.crop`` square.

    The resize reads only the crop's source box, so the pixels cropped away are never computed.
    """
    width, height = image.size
    if config.resize_mode == "stretch":
        size = (config.resize, config.resize)
    else:
        scale = config.resize / min(width, height)
        size = (max(config.crop, round(width * scale)), max(config.crop, round(height * scale)))
    left = (size[0] - config.crop) // 2
    top = (size[1] - config.crop) // 2
    if size == image.size:
        return image.crop((left, top, left + config.crop, top + config.crop))
    # The crop's box in source coordinates (fractional): the filter still reads the pixels around
    # it, so the result is that of resizing everything and cropping, up to float rounding of the
    # sampling positions (a few levels out of 255 on a fraction of the pixels).
    scale_x, scale_y = size[0] / width, size[1] / height
    box = (left / scale_x, top / scale_y, (left + config.crop) / scale_x, (top + config.crop) / scale_y)
    # reducing_gap lets Pillow shrink big images in cheap integer steps first.
    return image.resize((config.crop, config.crop), _FILTERS[config.interpolation], box=box, reducing_gap=3.0)


def to_chw_array(image: Image.Image, config: PreprocessingConfig) -> npt.NDArray[np.float32]:
    """Normalise an RGB image to a ``[3, crop, crop]`` float32 array (``[crop, crop, 3]`` for NHWC)."""
    pixels: npt.NDArray[np.uint8] = np.asarray(resize_and_crop(image, config))  # a view, no copy
    if config.channel_order == "bgr":
        pixels = pixels[:, :, ::-1]
    mean = np.asarray(config.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(config.std, dtype=np.float32)
    if config.layout == "nchw":  # read the HWC pixels transposed, write CHW contiguously
        pixels = pixels.transpose(2, 0, 1)
        mean, inv_std = mean[:, None, None], inv_std[:, None, None]
    out = np.empty(pixels.shape, dtype=np.float32)
    np.subtract(pixels, mean, out=out)  # uint8 - float32 computed in float32, as before
    out *= inv_std
    return out
