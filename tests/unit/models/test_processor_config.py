"""Dual-encoder folders whose processor was saved by transformers 5: ``processor_config.json`` only.

``CLIPProcessor.save_pretrained`` (and FLAVA's) in transformers 5 writes the image processor's
settings nested in ``processor_config.json`` (under ``image_processor``) and no
``preprocessor_config.json``. The handlers must read that layout as well as the older one, and
a load error must name the file that was read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data

from inference_engine.errors import ModelLoadError
from inference_engine.models.base import ModelConfig
from inference_engine.models.clip import ClipHandler
from inference_engine.models.dual_encoder import DualEncoderHandler
from inference_engine.models.flava import FlavaClassifier
from inference_engine.models.hf import image_processor_file, processor_preprocessing
from inference_engine.models.loader import read_config
from inference_engine.settings import BatchingSettings
from tests.hf_models import (
    IMAGE_SIDE,
    PROJECTION_DIM,
    bert_tokenizer,
    build_tiny_clip,
    build_tiny_flava,
    clip_tokenizer,
)

# The processors' resize differs from the crop, so the values can only have come from the file.
RESIZE = 40
LABELS = ["cat", "dog", "car"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("built")
    return {"clip": build_tiny_clip(root / "clip"), "flava": build_tiny_flava(root / "flava", LABELS)}


def clip_processor() -> Any:
    from transformers import CLIPImageProcessor, CLIPProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": RESIZE}, crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer())


def flava_processor() -> Any:
    from transformers import FlavaImageProcessor, FlavaProcessor

    image_processor = FlavaImageProcessor(
        size={"height": RESIZE, "width": RESIZE}, crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    )
    return FlavaProcessor(image_processor=image_processor, tokenizer=bert_tokenizer())


PROCESSORS = {"clip": clip_processor, "flava": flava_processor}
HANDLERS: dict[str, type[DualEncoderHandler]] = {"clip": ClipHandler, "flava": FlavaClassifier}


def resaved(built: dict[str, Path], kind: str, tmp_path: Path) -> Path:
    """A copy of the tiny model whose processor files are exactly what transformers writes."""
    folder = tmp_path / kind
    shutil.copytree(built[kind], folder)
    (folder / "weights" / "preprocessor_config.json").unlink()
    PROCESSORS[kind]().save_pretrained(str(folder / "weights"))
    return folder


def handler_for(kind: str, folder: Path) -> DualEncoderHandler:
    config: ModelConfig = read_config(folder, BatchingSettings())
    return HANDLERS[kind](config, folder)


def edit_processor_config(folder: Path, **image_processor: Any) -> Path:
    path = folder / "weights" / "processor_config.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["image_processor"].update(image_processor)
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["clip", "flava"])
def test_a_folder_saved_by_the_transformers_processor_loads_and_predicts(
    built: dict[str, Path], kind: str, tmp_path: Path
) -> None:
    folder = resaved(built, kind, tmp_path)
    weights = folder / "weights"
    # The layout this is about (if transformers changes it again, this says so first).
    assert (weights / "processor_config.json").is_file()
    assert not (weights / "preprocessor_config.json").exists()
    assert "image_processor" in json.loads((weights / "processor_config.json").read_text(encoding="utf-8"))

    handler = handler_for(kind, folder)
    handler.load("cpu")
    try:
        pre = handler.config.preprocessing
        assert (pre.resize, pre.crop) == (RESIZE, IMAGE_SIDE)
        assert pre.resize_mode == ("stretch" if kind == "flava" else "shorter_side")
        photo = Image.fromarray(data.chelsea())
        pixels = handler.preprocess(photo)
        assert pixels.shape == (3, IMAGE_SIDE, IMAGE_SIDE)
        # What transformers' own processor, loaded from the same folder, makes of the same photo.
        processor = type(PROCESSORS[kind]()).from_pretrained(str(weights))
        reference = np.asarray(processor(images=photo)["pixel_values"])
        assert reference.shape == (1, 3, IMAGE_SIDE, IMAGE_SIDE)
        assert float(np.abs(pixels - reference[0]).mean()) < 0.05
        (output,) = handler.predict([pixels])
        assert output.embedding.shape == (PROJECTION_DIM,)
        assert float(np.linalg.norm(output.embedding)) == pytest.approx(1.0, abs=1e-5)
        assert output.probabilities is not None
        assert output.probabilities.shape == (len(LABELS),)
        assert float(output.probabilities.sum()) == pytest.approx(1.0, abs=1e-5)
    finally:
        handler.unload()


def test_preprocessor_config_json_wins_when_both_are_present(built: dict[str, Path], tmp_path: Path) -> None:
    folder = resaved(built, "clip", tmp_path)
    shutil.copy(built["clip"] / "weights" / "preprocessor_config.json", folder / "weights")
    assert image_processor_file(folder / "weights") == folder / "weights" / "preprocessor_config.json"
    handler = handler_for("clip", folder)
    handler.load("cpu")
    assert handler.config.preprocessing.resize == IMAGE_SIDE  # the tiny model's own file says 32, not 40
    handler.unload()


def test_a_processor_config_without_an_image_processor_section_holds_no_settings(tmp_path: Path) -> None:
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "CLIPProcessor"}))
    assert image_processor_file(tmp_path) is None
    assert image_processor_file(tmp_path / "absent") is None
    with pytest.raises(ModelLoadError, match="has no image_processor settings"):
        processor_preprocessing(tmp_path / "processor_config.json", int_size_is_square=False)


def test_the_nested_section_translates_like_the_flat_file(tmp_path: Path) -> None:
    settings = {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "resample": 2}
    flat = tmp_path / "preprocessor_config.json"
    flat.write_text(json.dumps(settings))
    nested = tmp_path / "processor_config.json"
    nested.write_text(json.dumps({"image_processor": settings, "processor_class": "CLIPProcessor"}))
    expected = processor_preprocessing(flat, int_size_is_square=False)
    assert processor_preprocessing(nested, int_size_is_square=False) == expected
    assert expected["interpolation"] == "bilinear"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "cannot be read"),
        ('{"image_processor": ["size", 32]}', "image_processor is not an object"),
        (
            '{"image_processor": {"size": {"height": 32, "width": 40}}}',
            r"image_processor\.size .* not supported",
        ),
    ],
)
def test_unusable_nested_settings_are_load_errors_naming_processor_config(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "processor_config.json"
    path.write_text(text)
    with pytest.raises(ModelLoadError, match=f"{path}.*{message}"):
        processor_preprocessing(image_processor_file(tmp_path) or path, int_size_is_square=False)


def test_a_handler_load_error_names_processor_config(built: dict[str, Path], tmp_path: Path) -> None:
    folder = resaved(built, "clip", tmp_path)
    path = edit_processor_config(folder, crop_size={"height": 64, "width": 64})  # larger than the resize
    handler = handler_for("clip", folder)
    with pytest.raises(ModelLoadError, match=rf"^{path}: unusable pre-processing .*crop \(64\)"):
        handler.load("cpu")
