"""The ``flava_classifier`` handler on a tiny random FLAVA: features, the head, zero-shot, errors."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage import data

from inference_engine.errors import ModelLoadError, UnsupportedTask
from inference_engine.models.dual_encoder import ImageOutput
from inference_engine.models.flava import FlavaClassifier, embed_images, fit_head, read_head, save_head
from inference_engine.models.hf import load_pretrained
from inference_engine.models.loader import read_config, scan_repository
from inference_engine.settings import BatchingSettings
from tests.hf_models import PROJECTION_DIM, build_tiny_flava, clip_tokenizer

ROOT = Path(__file__).resolve().parents[3]
LABELS = ["cat", "coffee", "rocket", "astronaut"]


@pytest.fixture(scope="module")
def flava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_flava(tmp_path_factory.mktemp("tiny") / "flava", LABELS)


def handler_for(folder: Path, **overrides: Any) -> FlavaClassifier:
    config = read_config(folder, BatchingSettings())
    return FlavaClassifier(config.model_copy(update=overrides), folder)


@pytest.fixture(scope="module")
def flava(flava_dir: Path) -> Iterator[FlavaClassifier]:
    handler = handler_for(flava_dir)
    handler.load("cpu")
    yield handler
    handler.unload()


def photos() -> list[Image.Image]:
    return [Image.fromarray(a) for a in (data.chelsea(), data.coffee(), data.rocket(), data.astronaut())]


def outputs(handler: FlavaClassifier, images: list[Image.Image]) -> list[ImageOutput]:
    return handler.predict([handler.preprocess(image) for image in images])


def copy_folder(flava_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "flava"
    shutil.copytree(flava_dir, folder)
    return folder


def test_image_embeddings_are_the_normalised_projected_cls(flava: FlavaClassifier) -> None:
    """The documented feature: image_projection(image encoder CLS), unit norm, projection_dim long."""
    images = photos()
    towers = flava.towers
    assert towers is not None
    model: Any = towers.image.model
    pixels = torch.from_numpy(np.stack([flava.preprocess(image) for image in images]))
    with torch.inference_mode():
        features = model.get_image_features(pixel_values=pixels).pooler_output[:, 0, :]
        expected = torch.nn.functional.normalize(features, dim=-1).numpy()
    served = np.stack([flava.embed(o) for o in outputs(flava, images)])
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert served.shape == (4, PROJECTION_DIM)
    assert np.linalg.norm(served, axis=1) == pytest.approx([1.0] * 4, abs=1e-5)
    assert flava.embedding_dimension() == PROJECTION_DIM


def test_predict_answers_the_heads_softmax_with_its_labels(flava: FlavaClassifier, flava_dir: Path) -> None:
    weight, bias = read_head(flava_dir / "head.safetensors")
    assert flava.labels() == LABELS
    assert flava.capabilities().tasks == {"classify", "embed_image", "embed_text", "zero_shot"}
    for output in outputs(flava, photos()):
        expected = torch.softmax(weight @ torch.from_numpy(output.embedding) + bias, dim=-1).numpy()
        assert output.probabilities is not None
        np.testing.assert_allclose(output.probabilities, expected, atol=1e-5)
        predictions = flava.postprocess(output, top_k=4)["predictions"]
        assert predictions[0]["label"] == LABELS[int(np.argmax(expected))]
        assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-5)


def test_preprocessing_follows_flavas_processor(flava: FlavaClassifier) -> None:
    pre = flava.config.preprocessing
    assert (pre.resize, pre.crop, pre.resize_mode) == (32, 32, "stretch")


def test_the_text_tower_uses_the_bert_tokenizer(flava: FlavaClassifier) -> None:
    item = flava.preprocess_text(["a photo of a cat", "dog"])
    assert item.input_ids.tolist() == [[2, 7, 11, 10, 7, 13, 3], [2, 14, 3, 0, 0, 0, 0]]
    vectors = flava.predict_text([item, flava.preprocess_text(["red car"])])
    assert [v.shape for v in vectors] == [(PROJECTION_DIM,)] * 2
    assert [float(np.linalg.norm(v)) for v in vectors] == pytest.approx([1.0, 1.0], abs=1e-5)


def test_zero_shot_labels_through_the_text_tower(flava: FlavaClassifier) -> None:
    (output,) = outputs(flava, [photos()[0]])
    labels = ["red car", "cat", "dog"]
    embeddings = np.stack(flava.predict_text([flava.preprocess_text(flava.label_prompts(x)) for x in labels]))
    predictions = flava.rank_labels(output, embeddings, labels, top_k=3)["predictions"]
    assert {p["label"] for p in predictions} == set(labels)
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-5)
    embeddings[2] = output.embedding
    assert flava.rank_labels(output, embeddings, labels, top_k=1)["predictions"][0]["label"] == "dog"


def test_a_head_that_does_not_fit_the_features_is_refused(flava_dir: Path, tmp_path: Path) -> None:
    folder = copy_folder(flava_dir, tmp_path)
    save_head(folder / "head.safetensors", np.zeros((4, 8)), np.zeros(4), LABELS)
    with pytest.raises(ModelLoadError, match="takes 8-dim features but this FLAVA gives 16"):
        handler_for(folder).load("cpu")


def test_labels_must_match_the_heads_classes(flava_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="has 4 classes but 2 labels are configured"):
        handler_for(flava_dir, labels=["a", "b"]).load("cpu")


def test_a_missing_head_says_how_to_make_one(flava_dir: Path) -> None:
    with pytest.raises(
        ModelLoadError, match=r"does not exist; fit one with inference_engine.models.flava.save_head"
    ):
        handler_for(flava_dir, options={"head": "nothing.safetensors"}).load("cpu")


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"weight": torch.zeros(4, 16)}, "must hold weight"),
        ({"weight": torch.zeros(16), "bias": torch.zeros(16)}, "must hold weight"),
        ({"weight": torch.zeros(4, 16), "bias": torch.zeros(3)}, "must hold weight"),
    ],
)
def test_malformed_heads_are_refused(
    flava_dir: Path, tmp_path: Path, tensors: dict[str, torch.Tensor], message: str
) -> None:
    from safetensors.torch import save_file

    folder = copy_folder(flava_dir, tmp_path)
    save_file(tensors, str(folder / "head.safetensors"))
    with pytest.raises(ModelLoadError, match=message):
        handler_for(folder).load("cpu")


def test_a_corrupt_head_is_refused(flava_dir: Path, tmp_path: Path) -> None:
    folder = copy_folder(flava_dir, tmp_path)
    (folder / "head.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot be read"):
        handler_for(folder).load("cpu")


def test_without_a_head_it_serves_embeddings_and_zero_shot(flava_dir: Path) -> None:
    handler = handler_for(flava_dir, options={"head": None})
    handler.load("cpu")
    assert handler.capabilities().tasks == {"embed_image", "embed_text", "zero_shot"}
    (output,) = outputs(handler, [photos()[1]])
    with pytest.raises(UnsupportedTask):
        handler.postprocess(output, top_k=1)


def test_fit_save_and_serve_a_head(flava_dir: Path, tmp_path: Path) -> None:
    """The offline workflow: embed labelled images, fit, save, serve; the head learns them."""
    folder = copy_folder(flava_dir, tmp_path)
    (folder / "head.safetensors").unlink()
    (folder / "labels.txt").unlink()
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    images, targets = [], []
    for index, colour in enumerate(colours.values()):
        for _ in range(4):
            pixels = np.clip(np.array(colour) + rng.integers(-25, 25, (48, 48, 3)), 0, 255).astype(np.uint8)
            images.append(Image.fromarray(pixels))
            targets.append(index)
    embeddings = embed_images(folder, images, batch_size=5)  # works before any head exists
    assert embeddings.shape == (12, PROJECTION_DIM)
    weight, bias = fit_head(embeddings, targets, len(colours), l2=0.0, max_iter=300)
    save_head(folder / "head.safetensors", weight, bias, list(colours))
    handler = handler_for(folder)
    handler.load("cpu")
    assert handler.labels() == ["red", "green", "blue"]
    predicted = [handler.postprocess(o, top_k=1)["predictions"][0]["label"] for o in outputs(handler, images)]
    assert predicted == [list(colours)[t] for t in targets]


def test_save_head_checks_what_it_writes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"weight must be \[classes, dim\]"):
        save_head(tmp_path / "h.safetensors", np.zeros(3), np.zeros(3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="2 labels for 3 classes"):
        save_head(tmp_path / "h.safetensors", np.zeros((3, 4)), np.zeros(3), ["a", "b"])
    with pytest.raises(ValueError, match="single lines"):
        save_head(tmp_path / "h.safetensors", np.zeros((2, 4)), np.zeros(2), ["a", "b\nc"])
    path = save_head(tmp_path / "sub" / "h.safetensors", np.ones((2, 4)), [0.5, -0.5], [" a ", "b"])
    weight, bias = read_head(path)
    assert weight.shape == (2, 4)
    assert bias.tolist() == [0.5, -0.5]
    assert (path.parent / "labels.txt").read_text() == "a\nb\n"


def test_fit_head_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match=r"embeddings must be \[N, dim\]"):
        fit_head(np.zeros(4), [0, 1, 0, 1], 2)
    with pytest.raises(ValueError, match=r"targets must lie in 0..1"):
        fit_head(np.zeros((2, 4)), [0, 2], 2)


def test_embed_images_needs_images(flava_dir: Path) -> None:
    with pytest.raises(ValueError, match="no images"):
        embed_images(flava_dir, [])


def test_a_flava_sub_model_loaded_from_a_flavamodel_folder_is_caught(flava_dir: Path) -> None:
    """The trap MODELS.md warns about: FlavaImageModel.from_pretrained(FlavaModel folder) loads nothing."""
    from transformers import FlavaImageModel

    with pytest.raises(ModelLoadError, match="does not hold FlavaImageModel weights"):
        load_pretrained(FlavaImageModel, flava_dir / "weights", ("",))


def test_a_folder_without_a_tokenizer_is_refused(flava_dir: Path, tmp_path: Path) -> None:
    folder = copy_folder(flava_dir, tmp_path)
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / "weights" / name).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="has no BERT tokenizer"):
        handler_for(folder).load("cpu")


def test_a_tokenizer_bigger_than_the_text_tower_is_refused(flava_dir: Path, tmp_path: Path) -> None:
    folder = copy_folder(flava_dir, tmp_path)
    clip_tokenizer().save_pretrained(str(folder / "weights"))  # 49,408 ids for a 28-token tower
    with pytest.raises(ModelLoadError, match=r"the tokenizer has 494\d\d tokens but the text tower only 28"):
        handler_for(folder).load("cpu")


def test_save_and_reload_give_identical_outputs(
    flava_dir: Path, flava: FlavaClassifier, tmp_path: Path
) -> None:
    from transformers import BertTokenizer, FlavaModel

    folder = tmp_path / "again" / "flava"
    shutil.copytree(flava_dir, folder, ignore=shutil.ignore_patterns("weights"))
    FlavaModel.from_pretrained(str(flava_dir / "weights")).save_pretrained(str(folder / "weights"))
    BertTokenizer.from_pretrained(str(flava_dir / "weights")).save_pretrained(str(folder / "weights"))
    shutil.copy(flava_dir / "weights" / "preprocessor_config.json", folder / "weights")
    again = handler_for(folder)
    again.load("cpu")
    for first, second in zip(outputs(flava, photos()), outputs(again, photos()), strict=True):
        np.testing.assert_array_equal(first.embedding, second.embedding)
        assert first.probabilities is not None and second.probabilities is not None
        np.testing.assert_array_equal(first.probabilities, second.probabilities)


def test_half_precision_on_the_cpu_is_refused(flava_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="needs a CUDA device"):
        handler_for(flava_dir, dtype="bfloat16").load("cpu")


def test_the_shipped_flava_folder_validates_and_ships_no_weights() -> None:
    specs, broken = scan_repository(ROOT / "models", BatchingSettings(), ["flava_classifier"])
    assert broken == []
    (spec,) = specs
    assert spec.handler_class is FlavaClassifier
    assert spec.config.options["hub_id"] == "facebook/flava-full"
    assert spec.config.options["head"] == "head.safetensors"
    assert (ROOT / "models" / "flava_classifier" / "README.md").is_file()
    document = yaml.safe_load((ROOT / "models" / "flava_classifier" / "model.yaml").read_text())
    assert document["weights"] == "weights"
