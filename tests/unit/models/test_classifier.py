"""The built-in torch classifiers: real weights give real answers; bad set-ups fail to load clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from inference_engine.describe import describe_model
from inference_engine.errors import ModelLoadError
from inference_engine.models.base import ModelConfig
from inference_engine.models.classifier import EfficientNetLiteClassifier, TorchScriptClassifier
from tests.repository import add_tiny_cnn


@pytest.fixture(scope="module")
def efficientnet() -> EfficientNetLiteClassifier:
    config = ModelConfig(name="e", handler="efficientnet_lite", labels="imagenet", max_batch_size=2)
    handler = EfficientNetLiteClassifier(config, Path("."))
    handler.load("cpu")
    return handler


def test_packaged_efficientnet_recognises_real_photos(efficientnet: EfficientNetLiteClassifier) -> None:
    items = [efficientnet.preprocess(Image.fromarray(a)) for a in (data.coffee(), data.chelsea())]
    coffee, cat = efficientnet.predict(items)
    assert isinstance(coffee, np.ndarray)
    assert isinstance(cat, np.ndarray)
    assert efficientnet.postprocess(coffee, top_k=1)["predictions"][0]["label"] == "espresso"
    cat_labels = [p["label"] for p in efficientnet.postprocess(cat, top_k=3)["predictions"]]
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(cat_labels)
    assert float(coffee.sum()) == pytest.approx(1.0, abs=1e-4)


def test_batched_and_single_outputs_agree(efficientnet: EfficientNetLiteClassifier) -> None:
    item = efficientnet.preprocess(Image.fromarray(data.astronaut()))
    (single,) = efficientnet.predict([item])
    batched = efficientnet.predict([item, item, item])
    assert isinstance(single, np.ndarray)
    for output in batched:
        assert isinstance(output, np.ndarray)
        np.testing.assert_allclose(output, single, atol=1e-5)


def test_metadata_and_warmup(efficientnet: EfficientNetLiteClassifier) -> None:
    meta = describe_model(efficientnet.config, efficientnet)
    assert meta.input_size == (3, 224, 224)
    assert meta.labels_count == 1000
    efficientnet.warmup()  # runs batch 1 and batch max_batch_size without raising


def test_torchscript_classifier_on_auto_device(tmp_path: Path) -> None:
    folder = add_tiny_cnn(tmp_path)
    config = ModelConfig(
        name="tiny_cnn", handler="torchscript", weights="tiny.pt", labels="labels.txt",
        preprocessing={"resize": 64, "crop": 56}, intra_op_threads=1,
    )  # fmt: skip
    handler = TorchScriptClassifier(config, folder)
    handler.load("auto")
    assert handler.placement is not None
    assert handler.placement.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    (output,) = handler.predict([handler.preprocess(Image.fromarray(data.chelsea()))])
    assert isinstance(output, np.ndarray)
    assert output.dtype == np.float32
    assert output.shape == (4,)
    handler.unload()
    with pytest.raises(RuntimeError, match="before load"):
        handler.predict([])


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"weights": None}, "needs 'weights'"),
        ({"weights": "absent.pt"}, "does not exist"),
        ({"weights": "labels.txt"}, "not a TorchScript archive"),
        ({"dtype": "float16"}, "float16 needs a CUDA device"),
        ({"dtype": "bfloat16"}, "bfloat16 needs a CUDA device"),
    ],
)
def test_torchscript_load_failures_say_why(
    tmp_path: Path, settings: dict[str, object], expected: str
) -> None:
    folder = add_tiny_cnn(tmp_path)
    fields: dict[str, object] = {"name": "t", "handler": "torchscript", "weights": "tiny.pt", **settings}
    handler = TorchScriptClassifier(ModelConfig.model_validate(fields), folder)
    with pytest.raises(ModelLoadError, match=expected):
        handler.load("cpu")


def test_efficientnet_with_weights_that_do_not_fit(tmp_path: Path) -> None:
    torch.save({"unrelated.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    config = ModelConfig(name="e", handler="efficientnet_lite", weights="wrong.pth")
    with pytest.raises(ModelLoadError, match="do not fit"):
        EfficientNetLiteClassifier(config, tmp_path).load("cpu")
    other = ModelConfig(name="e", handler="efficientnet_lite", options={"variant": "efficientnet-lite2"})
    with pytest.raises(ModelLoadError, match="no packaged weights"):
        EfficientNetLiteClassifier(other, tmp_path).load("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_a_load_error(tmp_path: Path) -> None:
    folder = add_tiny_cnn(tmp_path)
    config = ModelConfig(name="t", handler="torchscript", weights="tiny.pt")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        TorchScriptClassifier(config, folder).load("cuda:0")
