"""The ``clip`` handler on a tiny random CLIP with the real tokenizer: shapes, norms, plumbing.

Random weights say nothing about meaning; these tests check what must hold for any weights:
unit-norm embeddings of the right size, template averaging, zero-shot probabilities, labels
embedded once, padding and batching that do not change results, and clear load errors.
"""

from __future__ import annotations

import json
import shutil
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage import data

from inference_engine.answers import TensorSpec
from inference_engine.describe import describe_model
from inference_engine.errors import InvalidInput, ModelLoadError, UnsupportedTask
from inference_engine.models import dual_encoder
from inference_engine.models.base import ModelConfig
from inference_engine.models.clip import ClipHandler
from inference_engine.models.dual_encoder import ImageOutput, TextItem
from inference_engine.models.hf import CLIP_MEAN, pooled, processor_preprocessing
from inference_engine.models.loader import read_config, scan_repository
from inference_engine.settings import BatchingSettings
from tests.hf_models import PROJECTION_DIM, build_tiny_clip, build_tiny_flava, clip_tokenizer

ROOT = Path(__file__).resolve().parents[3]
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny") / "clip")


def handler_for(folder: Path, **overrides: Any) -> ClipHandler:
    config = read_config(folder, BatchingSettings())
    return ClipHandler(config.model_copy(update=overrides), folder)


@pytest.fixture(scope="module")
def clip(clip_dir: Path) -> Iterator[ClipHandler]:
    handler = handler_for(clip_dir)
    handler.load("cpu")
    yield handler
    handler.unload()


def photos() -> list[Image.Image]:
    return [
        Image.fromarray(data.chelsea()),
        Image.fromarray(data.coffee()),
        Image.new("RGB", (40, 90), "red"),
    ]


def embed_images(handler: ClipHandler, images: list[Image.Image]) -> list[ImageOutput]:
    return handler.predict([handler.preprocess(image) for image in images])


# -- tokenizer --------------------------------------------------------------------------------


def test_a_real_clip_tokenizer_built_offline_from_the_open_clip_bpe_file() -> None:
    tokenizer = clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat")["input_ids"] == CAT_IDS


def test_the_handler_tokenises_with_the_folder_tokenizer(clip: ClipHandler) -> None:
    item = clip.preprocess_text(["a photo of a cat", "cat"])
    assert item.input_ids.tolist() == [CAT_IDS, [49406, 2368, 49407, 49407, 49407, 49407, 49407]]
    assert item.attention_mask.tolist()[1] == [1, 1, 1, 0, 0, 0, 0]


def test_long_prompts_are_truncated_at_the_models_positions(clip: ClipHandler) -> None:
    item = clip.preprocess_text(["cat " * 200])
    assert item.input_ids.shape == (1, 77)
    assert item.input_ids[0, -1] == 49407  # the end token survives truncation: CLIP pools there


def test_an_empty_text_item_is_refused(clip: ClipHandler) -> None:
    with pytest.raises(InvalidInput, match="at least one prompt"):
        clip.preprocess_text([])


def test_tokenising_from_many_threads_at_once_is_safe(clip: ClipHandler) -> None:
    results: list[list[list[int]]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(30):
                results.append(clip.preprocess_text(["a photo of a cat", "dog"]).input_ids.tolist())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 180
    assert all(r == results[0] for r in results)


# -- images -----------------------------------------------------------------------------------


def test_image_embeddings_have_the_projection_dimension_and_unit_norm(clip: ClipHandler) -> None:
    outputs = embed_images(clip, photos())
    assert clip.embedding_dimension() == PROJECTION_DIM
    for output in outputs:
        vector = clip.embed(output)
        assert vector.dtype == np.float32
        assert vector.shape == (PROJECTION_DIM,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(outputs[0].embedding, outputs[1].embedding)


def test_a_batch_answers_as_its_items_alone(clip: ClipHandler) -> None:
    images = photos()
    together = embed_images(clip, images)
    for image, output in zip(images, together, strict=True):
        (alone,) = embed_images(clip, [image])
        np.testing.assert_allclose(alone.embedding, output.embedding, atol=1e-5)


def test_preprocessing_comes_from_the_folders_processor_config(clip: ClipHandler) -> None:
    pre = clip.config.preprocessing
    assert (pre.resize, pre.crop, pre.resize_mode, pre.interpolation) == (32, 32, "shorter_side", "bicubic")
    assert pre.mean == pytest.approx(CLIP_MEAN)
    assert clip.decode_min_side() == 32
    assert clip.preprocess(Image.new("RGB", (100, 50))).shape == (3, 32, 32)


def test_preprocessing_in_model_yaml_wins(clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    shutil.copytree(clip_dir, folder)
    document = yaml.safe_load((folder / "model.yaml").read_text())
    document["preprocessing"] = {"resize": 40, "crop": 32, "mean": [0, 0, 0], "std": [255, 255, 255]}
    (folder / "model.yaml").write_text(yaml.safe_dump(document))
    handler = handler_for(folder)
    handler.load("cpu")
    assert handler.config.preprocessing.resize == 40
    assert handler.config.preprocessing.mean == (0, 0, 0)


def test_without_a_processor_config_clip_defaults_apply(clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    shutil.copytree(clip_dir, folder)
    (folder / "weights" / "preprocessor_config.json").unlink()
    handler = handler_for(folder)
    # CLIP's own 224 crop: refused at load, clearly, for this 32-pixel model.
    with pytest.raises(
        ModelLoadError, match=r"preprocessing.crop \(224\) must equal the image size .* \(32\)"
    ):
        handler.load("cpu")
    assert handler.config.preprocessing.mean == pytest.approx(CLIP_MEAN)
    assert handler.config.preprocessing.interpolation == "bicubic"


@pytest.mark.parametrize(
    ("raw", "square", "expected"),
    [
        ({"size": 224, "crop_size": 224}, False, {"resize": 224, "resize_mode": "shorter_side", "crop": 224}),
        ({"size": 224, "crop_size": 224}, True, {"resize": 224, "resize_mode": "stretch", "crop": 224}),
        ({"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}}, False,
         {"resize": 256, "crop": 224, "interpolation": "bicubic"}),
        ({"size": {"height": 64, "width": 64}, "do_center_crop": False, "resample": 2}, False,
         {"resize": 64, "resize_mode": "stretch", "crop": 64, "interpolation": "bilinear"}),
        ({"size": 32, "do_normalize": False}, False, {"mean": (0.0, 0.0, 0.0), "std": (255.0, 255.0, 255.0)}),
        ({"size": 32, "do_rescale": False, "image_mean": [1, 2, 3], "image_std": [4, 5, 6]}, False,
         {"mean": (1.0, 2.0, 3.0), "std": (4.0, 5.0, 6.0)}),
    ],
)  # fmt: skip
def test_processor_configs_translate(
    tmp_path: Path, raw: dict[str, Any], square: bool, expected: dict[str, Any]
) -> None:
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(raw))
    fields = processor_preprocessing(path, int_size_is_square=square)
    for key, value in expected.items():
        assert fields[key] == (pytest.approx(value) if isinstance(value, tuple) else value), key


@pytest.mark.parametrize("text", ['{"size": {"height": 224, "width": 300}}', "not json"])
def test_unusable_processor_configs_are_load_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "preprocessor_config.json"
    path.write_text(text)
    with pytest.raises(ModelLoadError, match=str(path)):
        processor_preprocessing(path, int_size_is_square=False)


# -- texts ------------------------------------------------------------------------------------


def test_text_embeddings_average_the_prompts_and_stay_unit_norm(clip: ClipHandler) -> None:
    first, second = (clip.predict_text([clip.preprocess_text([p])])[0] for p in ("a photo of a cat", "a cat"))
    (both,) = clip.predict_text([clip.preprocess_text(["a photo of a cat", "a cat"])])
    mean = (first + second) / 2
    np.testing.assert_allclose(both, mean / np.linalg.norm(mean), atol=1e-5)
    assert np.linalg.norm(both) == pytest.approx(1.0, abs=1e-5)
    assert both.shape == (PROJECTION_DIM,)


def test_padding_across_items_does_not_change_an_embedding(clip: ClipHandler) -> None:
    short = clip.preprocess_text(["cat"])
    long = clip.preprocess_text(["a very long prompt about a small grey cat on a red sofa", "dog"])
    (alone,) = clip.predict_text([short])
    together = clip.predict_text([long, short, long])
    assert len(together) == 3
    np.testing.assert_allclose(together[1], alone, atol=1e-5)


def test_label_prompts_follow_the_templates(clip: ClipHandler) -> None:
    assert clip.label_prompts("cat") == ["a photo of a cat.", "a picture of a cat."]


# -- zero-shot --------------------------------------------------------------------------------


def test_default_labels_answer_predict_with_probabilities(clip: ClipHandler) -> None:
    assert clip.capabilities().tasks == {"classify", "embed_image", "embed_text", "zero_shot"}
    assert clip.labels() == ["cat", "dog", "car"]
    for output in embed_images(clip, photos()):
        predictions = clip.postprocess(output, top_k=3)["predictions"]
        assert {p["label"] for p in predictions} == {"cat", "dog", "car"}
        assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-5)
        scores = [p["score"] for p in predictions]
        assert scores == sorted(scores, reverse=True)


def test_scores_and_tensors_for_the_v2_protocol(clip: ClipHandler, clip_dir: Path) -> None:
    image = photos()[0]
    item = clip.preprocess(image)
    (output,) = clip.predict([clip.tensor_item(item)])
    assert output.probabilities is not None
    np.testing.assert_array_equal(clip.scores(output), output.probabilities)
    with pytest.raises(InvalidInput, match=r"shape \[3, 32, 32\]"):
        clip.tensor_item(np.zeros((3, 224, 224), np.float32))
    unlabelled = handler_for(clip_dir, labels=None)
    unlabelled.load("cpu")
    with pytest.raises(UnsupportedTask, match="class probabilities without labels"):
        unlabelled.scores(unlabelled.predict([item])[0])


def test_default_label_scores_are_the_zero_shot_ranking_of_those_labels(clip: ClipHandler) -> None:
    """``predict`` + ``postprocess`` and ``rank_labels`` with the same labels agree."""
    assert clip.label_embeddings is not None
    label_embeddings = clip.label_embeddings.cpu().numpy()
    for output in embed_images(clip, photos()):
        served = clip.postprocess(output, top_k=3)["predictions"]
        ranked = clip.rank_labels(output, label_embeddings, clip.labels(), top_k=3)["predictions"]
        assert [p["label"] for p in served] == [p["label"] for p in ranked]
        assert [p["score"] for p in served] == pytest.approx([p["score"] for p in ranked], abs=1e-5)


def test_rank_labels_puts_the_matching_label_first(clip: ClipHandler) -> None:
    (output,) = embed_images(clip, [photos()[0]])
    rng = np.random.default_rng(0)
    others = rng.normal(size=(4, PROJECTION_DIM)).astype(np.float32)
    others /= np.linalg.norm(others, axis=1, keepdims=True)
    label_embeddings = np.concatenate([others[:2], output.embedding[None], others[2:]])
    labels = ["sky", "sea", "this one", "rock", "sand"]
    predictions = clip.rank_labels(output, label_embeddings, labels, top_k=5)["predictions"]
    assert predictions[0]["label"] == "this one"
    assert predictions[0]["index"] == 2
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-5)
    assert len(clip.rank_labels(output, label_embeddings, labels, top_k=2)["predictions"]) == 2


def test_rank_labels_refuses_embeddings_that_do_not_fit(clip: ClipHandler) -> None:
    (output,) = embed_images(clip, [photos()[0]])
    with pytest.raises(ValueError, match="do not fit 3 labels"):
        clip.rank_labels(output, np.zeros((2, PROJECTION_DIM), np.float32), ["a", "b", "c"], top_k=1)


def test_default_labels_are_embedded_once_at_load(clip_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = ClipHandler.predict_text

    def counting(self: ClipHandler, items: list[TextItem]) -> list[np.ndarray]:
        calls.append(len(items))
        return original(self, items)

    monkeypatch.setattr(ClipHandler, "predict_text", counting)
    handler = handler_for(clip_dir)
    handler.load("cpu")
    assert calls == [3]  # three labels, one forward, on load
    for output in embed_images(handler, photos() * 3):
        handler.postprocess(output, top_k=2)
    assert calls == [3]


def test_many_default_labels_are_embedded_in_bounded_forwards(
    clip_dir: Path, clip: ClipHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dual_encoder, "LABEL_PROMPTS_PER_FORWARD", 4)  # two templates: two labels a forward
    handler = handler_for(clip_dir)
    sizes: list[int] = []
    original = handler.predict_text
    monkeypatch.setattr(handler, "predict_text", lambda items: sizes.append(len(items)) or original(items))
    handler.load("cpu")
    assert sizes == [2, 1]
    assert handler.label_embeddings is not None and clip.label_embeddings is not None
    torch.testing.assert_close(handler.label_embeddings, clip.label_embeddings, atol=1e-5, rtol=0)


def test_without_labels_predict_is_refused_but_the_rest_answers(clip_dir: Path) -> None:
    handler = handler_for(clip_dir, labels=None)
    handler.load("cpu")
    assert handler.capabilities().tasks == {"embed_image", "embed_text", "zero_shot"}
    (output,) = embed_images(handler, [photos()[0]])
    assert output.probabilities is None
    with pytest.raises(UnsupportedTask, match="classification without labels"):
        handler.capabilities().require("classify", "m")
    assert describe_model(handler.config, handler).outputs == (
        TensorSpec("embeddings", "FP32", (-1, PROJECTION_DIM)),
    )


# -- loading ----------------------------------------------------------------------------------


def test_save_and_reload_give_identical_embeddings(clip_dir: Path, clip: ClipHandler, tmp_path: Path) -> None:
    from transformers import CLIPModel, CLIPTokenizer

    folder = tmp_path / "again" / "clip"
    shutil.copytree(clip_dir, folder, ignore=shutil.ignore_patterns("weights"))
    CLIPModel.from_pretrained(str(clip_dir / "weights")).save_pretrained(str(folder / "weights"))
    CLIPTokenizer.from_pretrained(str(clip_dir / "weights")).save_pretrained(str(folder / "weights"))
    shutil.copy(clip_dir / "weights" / "preprocessor_config.json", folder / "weights")
    again = handler_for(folder)
    again.load("cpu")
    for first, second in zip(embed_images(clip, photos()), embed_images(again, photos()), strict=True):
        np.testing.assert_array_equal(first.embedding, second.embedding)
    prompts = [clip.preprocess_text(["a photo of a dog"])]
    np.testing.assert_array_equal(clip.predict_text(prompts)[0], again.predict_text(prompts)[0])


def test_warmup_runs_both_towers(clip_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handler = handler_for(clip_dir)
    handler.load("cpu")
    batches: list[tuple[str, int]] = []
    image, text = handler.predict, handler.predict_text
    monkeypatch.setattr(
        handler, "predict", lambda items: batches.append(("image", len(items))) or image(items)
    )
    monkeypatch.setattr(
        handler, "predict_text", lambda items: batches.append(("text", len(items))) or text(items)
    )
    handler.warmup()
    assert sorted(batches) == [("image", 1), ("image", 4), ("text", 1), ("text", 4)]


def test_half_precision_on_the_cpu_is_refused_before_loading(clip_dir: Path) -> None:
    handler = handler_for(clip_dir, dtype="float16")
    with pytest.raises(ModelLoadError, match="float16 needs a CUDA device"):
        handler.load("cpu")
    assert handler.towers is None


def test_using_the_model_before_load_is_an_error(clip_dir: Path) -> None:
    handler = handler_for(clip_dir)
    assert handler.embedding_dimension() is None
    with pytest.raises(RuntimeError, match="not loaded"):
        handler.preprocess_text(["cat"])


def test_a_folder_without_a_tokenizer_is_refused(clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    shutil.copytree(clip_dir, folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / "weights" / name).unlink()
    with pytest.raises(
        ModelLoadError, match=r"has no CLIP tokenizer \(tokenizer.json or vocab.json \+ merges.txt\)"
    ):
        handler_for(folder).load("cpu")


def test_a_folder_without_config_is_refused(clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    shutil.copytree(clip_dir, folder)
    (folder / "weights" / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"has no config.json: not a Hugging Face model folder"):
        handler_for(folder).load("cpu")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"garbage" * 10, "header"), (None, "no file named model.safetensors")],
)
def test_unreadable_weights_are_load_errors(
    clip_dir: Path, tmp_path: Path, content: bytes | None, message: str
) -> None:
    folder = tmp_path / "clip"
    shutil.copytree(clip_dir, folder)
    weights_file = folder / "weights" / "model.safetensors"
    if content is None:
        weights_file.unlink()
    else:
        weights_file.write_bytes(content)
    with pytest.raises(ModelLoadError, match=f"does not load as CLIPModel: .*{message}"):
        handler_for(folder).load("cpu")


def test_weights_of_another_architecture_are_refused(clip_dir: Path, tmp_path: Path) -> None:
    flava = build_tiny_flava(tmp_path / "flava", ["a", "b"])
    folder = tmp_path / "clip"
    shutil.copytree(clip_dir, folder, ignore=shutil.ignore_patterns("weights"))
    shutil.copytree(flava / "weights", folder / "weights")
    shutil.copy(clip_dir / "weights" / "tokenizer.json", folder / "weights")
    with pytest.raises(ModelLoadError, match="CLIPModel"):
        handler_for(folder).load("cpu")


@pytest.mark.parametrize("templates", [[], ["no placeholder"], "a photo of a {}.", [3]])
def test_templates_must_hold_a_placeholder(clip_dir: Path, templates: object) -> None:
    handler = handler_for(clip_dir, options={"templates": templates})
    with pytest.raises(ModelLoadError, match=r"options.templates must be a non-empty list"):
        handler.load("cpu")


# -- export and helpers -----------------------------------------------------------------------


def test_onnx_export_gives_the_served_image_tower(clip: ClipHandler) -> None:
    module, kind = clip.onnx_export()
    assert kind == "embedding"
    images = photos()
    batch = torch.from_numpy(np.stack([clip.preprocess(image) for image in images]))
    with torch.inference_mode():
        exported = module(batch).numpy()
    served = np.stack([o.embedding for o in embed_images(clip, images)])
    np.testing.assert_allclose(exported, served, atol=1e-6)


def test_the_image_tower_traces_to_onnx(clip: ClipHandler, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    module, _ = clip.onnx_export()
    path = tmp_path / "clip.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
        torch.onnx.export(
            module, (torch.zeros(2, 3, 32, 32),), str(path), input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17, dynamo=False,
        )  # fmt: skip
    assert path.stat().st_size > 0


def test_pooled_reads_tensors_and_output_objects() -> None:
    tensor = torch.ones(2, 3)
    assert pooled(tensor) is tensor

    class Output:
        pooler_output = tensor

    assert pooled(Output()) is tensor
    with pytest.raises(TypeError, match="pooler_output"):
        pooled(object())


def test_the_shipped_clip_folder_validates() -> None:
    specs, broken = scan_repository(ROOT / "models", BatchingSettings(), ["clip"])
    assert broken == []
    (spec,) = specs
    assert spec.handler_class is ClipHandler
    config: ModelConfig = spec.config
    assert config.weights == "weights"
    assert config.options["hub_id"] == "openai/clip-vit-base-patch32"
    assert 20 <= len(config.labels or []) <= 30
    assert all("{}" in template for template in config.options["templates"])
