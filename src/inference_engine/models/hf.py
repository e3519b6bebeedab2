"""Loading Hugging Face folders for the CLIP and FLAVA handlers: strict, offline-friendly helpers.

Strict because transformers forgives too much for a server: missing weights become random ones
with a warning, a missing tokenizer file becomes a three-token vocabulary, a missing folder is
taken for a hub id. Each helper turns such a case into a :class:`ModelLoadError` that names the
file and what is wrong. ``transformers`` itself is imported only by the handlers' ``load``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import torch

from inference_engine.errors import ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ModelT = TypeVar("ModelT", bound="PreTrainedModel")

# OpenAI CLIP's normalisation, in 0..255 units (FLAVA uses the same values).
CLIP_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
CLIP_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)
_RESAMPLE: dict[int, Literal["nearest", "bilinear", "bicubic", "lanczos"]] = {
    0: "nearest",
    1: "lanczos",
    2: "bilinear",
    3: "bicubic",
}


def pooled(output: object) -> torch.Tensor:
    """Projected features from ``get_image_features``/``get_text_features``.

    transformers 4.x returns the tensor itself, 5.x an output object holding it as ``pooler_output``.
    """
    if isinstance(output, torch.Tensor):
        return output
    features = getattr(output, "pooler_output", None)
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"expected a tensor or an output with pooler_output, got {type(output).__name__}")
    return features


def normalise(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last axis in float32 (half-precision norms lose too much)."""
    return torch.nn.functional.normalize(features.float(), dim=-1)


def load_pretrained(cls: type[ModelT], folder: Path, used: Sequence[str]) -> ModelT:
    """``cls.from_pretrained(folder)``, refusing a folder whose weights do not fill the parts used.

    transformers initialises missing weights at random with only a warning (a FLAVA sub-model
    loaded from a FlavaModel folder loads nothing at all), which would serve noise; here a
    missing or mismatched weight under one of the ``used`` prefixes fails the load (others,
    such as FLAVA's multimodal encoder, never run here and may be absent).
    """
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} has no config.json: not a Hugging Face model folder")
    from safetensors import SafetensorError

    try:
        result = cast(
            "tuple[ModelT, dict[str, Any]]", cls.from_pretrained(str(folder), output_loading_info=True)
        )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise ModelLoadError(f"{folder} does not load as {cls.__name__}: {exc}") from None
    model, info = result
    missing = sorted(str(k) for k in info.get("missing_keys") or () if str(k).startswith(tuple(used)))
    mismatched = [str(e[0]) for e in info.get("mismatched_keys") or () if str(e[0]).startswith(tuple(used))]
    if missing or mismatched:
        raise ModelLoadError(
            f"{folder} does not hold {cls.__name__} weights: missing {missing[:3]} "
            f"({len(missing)} in all), wrong shape {mismatched[:3]}"
        )
    return model


def require_files(folder: Path, alternatives: Sequence[Sequence[str]], what: str) -> None:
    """Refuse a folder lacking every complete set of ``alternatives`` (an empty tokenizer otherwise)."""
    if not any(all((folder / name).is_file() for name in names) for names in alternatives):
        wanted = " or ".join(" + ".join(names) for names in alternatives)
        raise ModelLoadError(f"{folder} has no {what} ({wanted})")


def config_int(config: object, key: str, folder: Path) -> int:
    """An integer setting of a transformers config, or a load error naming it."""
    value = getattr(config, key, None)
    if not isinstance(value, int):
        raise ModelLoadError(f"{folder}/config.json: {key} is missing or not an integer ({value!r})")
    return value


def max_tokens(tokenizer: PreTrainedTokenizerBase, text_config: object, folder: Path) -> int:
    """Prompt length the text tower takes; refuses a tokenizer whose ids overflow its vocabulary."""
    vocabulary = config_int(text_config, "vocab_size", folder)
    if len(tokenizer) > vocabulary:
        raise ModelLoadError(
            f"{folder}: the tokenizer has {len(tokenizer)} tokens but the text tower only "
            f"{vocabulary}; tokenizer and weights do not belong together"
        )
    return min(config_int(text_config, "max_position_embeddings", folder), int(tokenizer.model_max_length))


PREPROCESSOR_CONFIG = "preprocessor_config.json"
PROCESSOR_CONFIG = "processor_config.json"
# The key of processor_config.json under which transformers 5 nests the image processor's settings.
IMAGE_PROCESSOR_KEY = "image_processor"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} cannot be read: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    return cast("dict[str, Any]", raw)


def _image_processor_section(path: Path, raw: dict[str, Any]) -> dict[str, Any] | None:
    """The image processor's settings in ``path``, read as ``raw``.

    The whole of a ``preprocessor_config.json``; the ``image_processor`` object of a
    ``processor_config.json``, or ``None`` when it has none (transformers 4 wrote such files
    with the processor's own settings only).
    """
    if path.name != PROCESSOR_CONFIG:
        return raw
    section = raw.get(IMAGE_PROCESSOR_KEY)
    if section is not None and not isinstance(section, dict):
        raise ModelLoadError(f"{path}: {IMAGE_PROCESSOR_KEY} is not an object ({section!r})")
    return cast("dict[str, Any] | None", section)


def image_processor_file(folder: Path) -> Path | None:
    """The file of ``folder`` that holds its image processor's settings, or ``None``.

    ``preprocessor_config.json`` when there is one (what transformers 4 and an image processor's
    own ``save_pretrained`` write), else ``processor_config.json`` if it nests the settings under
    ``image_processor`` (what a processor's ``save_pretrained`` writes in transformers 5, with no
    ``preprocessor_config.json``). Note that transformers itself prefers the nested settings
    when a folder has both files; such a folder's ``preprocessor_config.json`` is kept here so
    that folders which served before serve the same.
    """
    preprocessor = folder / PREPROCESSOR_CONFIG
    if preprocessor.is_file():
        return preprocessor
    processor = folder / PROCESSOR_CONFIG
    if processor.is_file() and _image_processor_section(processor, _read_json(processor)) is not None:
        return processor
    return None


def processor_preprocessing(path: Path, *, int_size_is_square: bool) -> dict[str, Any]:
    """``PreprocessingConfig`` fields from the image processor's settings in the file ``path``.

    ``path`` is a ``preprocessor_config.json``, or a ``processor_config.json`` with the settings
    nested under ``image_processor`` (see :func:`image_processor_file`); errors name it, and the
    section for nested keys. ``size`` as ``{"shortest_edge": n}`` resizes the shorter side,
    ``{"height": n, "width": n}`` stretches to a square; a bare int means either, depending on
    the processor (``int_size_is_square``: FLAVA's stretches, CLIP's keeps the aspect ratio).
    Mean and std are converted to 0..255 units through ``rescale_factor``.
    """
    raw = _image_processor_section(path, _read_json(path))
    if raw is None:
        raise ModelLoadError(f"{path} has no {IMAGE_PROCESSOR_KEY} settings")
    prefix = f"{IMAGE_PROCESSOR_KEY}." if path.name == PROCESSOR_CONFIG else ""

    def side(key: str, value: object) -> tuple[int, Literal["shorter_side", "stretch"]]:
        if isinstance(value, int):
            return value, "stretch" if int_size_is_square else "shorter_side"
        if isinstance(value, dict):
            if isinstance(value.get("shortest_edge"), int):
                return int(value["shortest_edge"]), "shorter_side"
            if isinstance(value.get("height"), int) and value.get("height") == value.get("width"):
                return int(value["height"]), "stretch"
        raise ModelLoadError(
            f"{path}: {prefix}{key} {value!r} is not supported; set preprocessing in model.yaml"
        )

    resize, mode = side("size", raw.get("size", 224))
    crop = side("crop_size", raw.get("crop_size", resize))[0] if raw.get("do_center_crop", True) else resize
    scale = float(raw.get("rescale_factor", 1 / 255)) if raw.get("do_rescale", True) else 1.0
    normalize = raw.get("do_normalize", True)
    mean = raw.get("image_mean", [0.0] * 3) if normalize else [0.0] * 3
    std = raw.get("image_std", [1.0] * 3) if normalize else [1.0] * 3
    return {
        "resize": resize if raw.get("do_resize", True) else crop,
        "resize_mode": mode,
        "crop": crop,
        "interpolation": _RESAMPLE.get(raw.get("resample", 3), "bicubic"),
        "mean": tuple(float(m) / scale for m in mean),
        "std": tuple(float(s) / scale for s in std),
    }
