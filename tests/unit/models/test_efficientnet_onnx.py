"""EfficientNet-Lite served on ONNX Runtime from its torch checkpoint: the same answers as the
torch network, converted once and cached, and refusals that say what is wrong."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from inference_engine.errors import ModelLoadError
from inference_engine.models import efficientnet_onnx
from inference_engine.models.classifier import EfficientNetLiteClassifier
from inference_engine.models.efficientnet_onnx import (
    EfficientNetLiteOnnx,
    block_strides,
    build_onnx,
    cache_directory,
    packaged_weights,
)
from inference_engine.models.loader import read_config
from inference_engine.models.torchfile import load_state_dict
from inference_engine.settings import BatchingSettings
from tests.helpers import ROOT
from tests.repository import TinyCNN

SHIPPED = ROOT / "models" / "efficientnet_lite0"
PHOTOS = [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee()), Image.fromarray(data.astronaut())]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return cache_directory()


def shipped(**changes: object) -> EfficientNetLiteOnnx:
    config = read_config(SHIPPED, BatchingSettings()).model_copy(update=changes)
    return EfficientNetLiteOnnx(config, SHIPPED)


def classify(handler: EfficientNetLiteOnnx | EfficientNetLiteClassifier) -> list[np.ndarray]:
    outputs = handler.predict([handler.preprocess(photo) for photo in PHOTOS])
    return [np.asarray(o) for o in outputs]


def test_it_answers_as_the_torch_network_does() -> None:
    converted = shipped()
    converted.load("cpu")
    reference = EfficientNetLiteClassifier(read_config(SHIPPED, BatchingSettings()), SHIPPED)
    reference.load("cpu")
    for ours, theirs in zip(classify(converted), classify(reference), strict=True):
        assert np.abs(ours - theirs).max() < 1e-4
        assert list(np.argsort(ours)[-5:]) == list(np.argsort(theirs)[-5:])
    cat = converted.postprocess(classify(converted)[0], top_k=3)["predictions"]
    assert {p["label"] for p in cat} & {"tabby", "tiger cat", "Egyptian cat"}
    parity = converted.describe()["backend"]["converted"]["parity_max_abs_diff"]
    assert parity is not None and parity < 1e-3


def test_the_graph_is_converted_once_then_read_from_the_cache(cache: Path) -> None:
    first = shipped()
    first.load("cpu")
    assert first.conversion["cached"] is False
    (graph,) = cache.glob("efficientnet-lite0-*.onnx")
    assert first.conversion["graph"] == str(graph)
    second = shipped()
    second.load("cpu")
    assert second.conversion == {"from": first.conversion["from"], "cached": True, "graph": str(graph)}
    np.testing.assert_allclose(classify(first)[0], classify(second)[0], atol=1e-6)


def test_an_unwritable_cache_still_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    handler = shipped()
    handler.load("cpu")
    assert "graph" not in handler.conversion and handler.conversion["cached"] is False
    assert len(classify(handler)) == 3


def test_a_graph_that_answers_unlike_torch_is_refused(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    monkeypatch.setattr(efficientnet_onnx, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(ModelLoadError, match="differs from the torch network"):
        shipped().load("cpu")
    assert not cache.exists() or not list(cache.iterdir())  # nothing kept for the next load


def test_without_torch_the_conversion_serves_unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_torch(name: str, *args: object, **kwargs: object) -> object:
        if name == "torch" or name.startswith("torch."):
            raise ImportError(name=name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_torch)
    handler = shipped()
    handler.load("cpu")
    assert handler.conversion["parity_max_abs_diff"] is None


def test_a_checkpoint_that_is_not_efficientnet_lite(tmp_path: Path) -> None:
    torch.save(TinyCNN(4).state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(ModelLoadError, match=r"not an EfficientNet-Lite state dict|stages"):
        shipped(weights=str(tmp_path / "tiny.pth")).load("cpu")


def test_a_checkpoint_with_stages_missing() -> None:
    state = load_state_dict(packaged_weights("efficientnet-lite0"))
    assert block_strides(state) == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]
    without_last_stage = {k: v for k, v in state.items() if not k.startswith("_blocks.15.")}
    with pytest.raises(ModelLoadError, match="15 blocks in 6 stages; EfficientNet-Lite has 7 stages"):
        block_strides(without_last_stage)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dtype": "float16"}, "writes float32 graphs"),
        ({"options": {"variant": "efficientnet-b9"}}, "no packaged weights"),
        ({"weights": "missing.pth"}, "does not exist"),
    ],
)
def test_refusals_name_the_problem(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        shipped(**changes).load("cpu")


def test_an_unknown_variant_with_weights(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"options\.variant 'efficientnet-b0'"):
        build_onnx({}, "efficientnet-b0")


def test_weights_missing_is_reported_before_loading(tmp_path: Path) -> None:
    config = read_config(SHIPPED, BatchingSettings())
    assert EfficientNetLiteOnnx.weights_missing(config, SHIPPED) is None
    lite1 = config.model_copy(update={"options": {"variant": "efficientnet-lite1"}})
    reason = EfficientNetLiteOnnx.weights_missing(lite1, SHIPPED)
    assert "no packaged weights for efficientnet-lite1" in str(reason)
    with_weights = lite1.model_copy(update={"weights": "w.pth"})
    assert EfficientNetLiteOnnx.weights_missing(with_weights, SHIPPED) is None


def test_options_of_the_torch_handler_are_accepted_and_others_refused() -> None:
    shipped(options={"variant": "efficientnet-lite0", "torchscript": False})  # both the family's
    with pytest.raises(ModelLoadError, match=r"options\.speed"):
        shipped(options={"speed": "max"})


def test_the_conversion_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="inference_engine.models.efficientnet_onnx"):
        shipped().load("cpu")
    assert any(r.getMessage() == "converted EfficientNet-Lite checkpoint to ONNX" for r in caplog.records)
