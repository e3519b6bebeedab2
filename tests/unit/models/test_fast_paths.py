"""Speed settings that must not change answers: channels_last for EfficientNet, ORT thread spinning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image
from skimage import data

from inference_engine.errors import ModelLoadError
from inference_engine.models.base import ModelConfig
from inference_engine.models.classifier import EfficientNetLiteClassifier
from inference_engine.models.onnx_backend import OnnxImageModel


def _efficientnet(**options: Any) -> EfficientNetLiteClassifier:
    config = ModelConfig(name="e", handler="efficientnet_lite", labels="imagenet", options=options)
    handler = EfficientNetLiteClassifier(config, Path("."))
    handler.load("cpu")
    return handler


PHOTOS = [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]


def test_efficientnet_serves_a_frozen_channels_last_trace_with_the_eager_answers() -> None:
    handler = _efficientnet()
    assert handler.module is not None
    conv = next(m for m in handler.module.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(handler._forward, torch.jit.ScriptModule)
    items = [handler.preprocess(p) for p in PHOTOS]
    fast = np.stack(handler.predict(items))  # type: ignore[arg-type]
    with torch.inference_mode():  # the network as built, in the default memory format
        handler.module.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        plain = torch.softmax(handler.module(torch.from_numpy(np.stack(items))), dim=-1).numpy()
    np.testing.assert_allclose(fast, plain, atol=1e-4)
    assert fast.argmax(axis=1).tolist() == plain.argmax(axis=1).tolist()
    for size in (1, 3, 5):  # the trace was made at batch 2; other batch sizes run too
        assert len(handler.predict(items[:1] * size)) == size
    module, kind = handler.onnx_export()
    assert module is handler.module and kind == "logits"  # export takes the eager network


def test_torchscript_can_be_turned_off_and_a_failed_trace_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    off = _efficientnet(torchscript=False)
    assert off._forward is off.module

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("cannot trace this")

    monkeypatch.setattr(torch.jit, "trace", broken)
    fallback = _efficientnet()
    assert fallback._forward is fallback.module
    assert "tracing it failed" in caplog.text
    assert len(fallback.predict([fallback.preprocess(PHOTOS[0])])) == 1


def test_a_torchscript_option_that_is_not_a_boolean_is_a_load_error() -> None:
    with pytest.raises(ModelLoadError, match=r"options\.torchscript"):
        _efficientnet(torchscript="yes")


def _pooling_graph(path: Path) -> None:
    """[N, 3, 56, 56] -> per-channel means [N, 3]: a valid classifier graph in two ops."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["output"]),
        ],
        "pool",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 56, 56])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize(("options", "expected"), [({}, "0"), ({"allow_spinning": True}, "1")])
def test_ort_threads_sleep_unless_spinning_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], expected: str
) -> None:
    _pooling_graph(tmp_path / "pool.onnx")
    seen: list[ort.SessionOptions] = []
    real = ort.InferenceSession

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["sess_options"])
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    config = ModelConfig(
        name="p", handler="onnx", backend="onnx", weights="pool.onnx", labels=["r", "g", "b"],
        preprocessing={"resize": 56, "crop": 56}, options=options,
    )  # fmt: skip
    handler = OnnxImageModel(config, tmp_path)
    handler.load("cpu")
    assert seen[0].get_session_config_entry("session.intra_op.allow_spinning") == expected
    (scores,) = handler.predict([handler.preprocess(Image.new("RGB", (56, 56), (255, 0, 0)))])
    assert handler.postprocess(scores, top_k=1)["predictions"][0]["label"] == "r"
