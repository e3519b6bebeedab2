"""Which class serves a built-in handler: ONNX Runtime first under ``backend: auto`` with torch
as the fallback, and a model whose packages are missing named with the extra that brings them."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import pytest

from inference_engine.errors import ModelLoadError
from inference_engine.metrics import Metrics
from inference_engine.models import efficientnet_onnx, loader
from inference_engine.models.classifier import EfficientNetLiteClassifier, TorchScriptClassifier
from inference_engine.models.efficientnet_onnx import EfficientNetLiteOnnx
from inference_engine.models.loader import ExtraMissing, builtin_handlers, scan_repository
from inference_engine.models.onnx_backend import OnnxImageModel
from inference_engine.server import build_app
from inference_engine.settings import BatchingSettings, Settings
from tests.helpers import cat_jpeg, in_process_client
from tests.repository import add_colour_model, add_default_model, add_model


@pytest.mark.parametrize(
    ("handler", "backend", "expected", "fallback"),
    [
        ("efficientnet_lite", "auto", EfficientNetLiteOnnx, EfficientNetLiteClassifier),
        ("efficientnet_lite", "onnx", EfficientNetLiteOnnx, None),
        ("efficientnet_lite", "torch", EfficientNetLiteClassifier, None),
        ("torchscript", "auto", TorchScriptClassifier, None),  # no converter: torch
        ("torchscript", "onnx", OnnxImageModel, None),  # an exported graph
        ("onnx", "torch", OnnxImageModel, None),
    ],
)
def test_the_class_for_each_backend(
    handler: str, backend: str, expected: type, fallback: type | None
) -> None:
    assert builtin_handlers(handler, backend) == (expected, fallback)


@pytest.fixture
def without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing a torch handler fails as it does in the slim install."""
    real = importlib.import_module

    def import_module(name: str, package: str | None = None) -> Any:
        if name in ("inference_engine.models.classifier", "inference_engine.models.clip"):
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real(name, package)

    monkeypatch.setattr(loader.importlib, "import_module", import_module)


@pytest.mark.usefixtures("without_torch")
def test_a_torch_handler_without_torch_names_the_extra(tmp_path: Path) -> None:
    cls, fallback = builtin_handlers("clip", "torch")
    assert issubclass(cls, ExtraMissing) and fallback is None
    reason = cls.weights_missing(None, tmp_path)  # type: ignore[arg-type]
    assert reason == "ClipHandler needs torch, which is not installed: pip install 'inference-engine[torch]'"
    with pytest.raises(ModelLoadError, match=r"inference-engine\[torch\]"):
        cls(None, tmp_path).load("cpu")  # type: ignore[arg-type]
    # auto still serves EfficientNet on ONNX Runtime; there is just nothing to fall back to
    assert builtin_handlers("efficientnet_lite", "auto") == (EfficientNetLiteOnnx, None)


def test_other_import_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(name: str, package: str | None = None) -> Any:
        raise ModuleNotFoundError("No module named 'numpy'", name="numpy")

    monkeypatch.setattr(loader.importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="numpy"):
        builtin_handlers("clip", "torch")


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    add_colour_model(tmp_path, "colour")
    add_model(tmp_path, "zero_shot", {"handler": "clip", "weights": "openai/clip-vit-base-patch32"})
    return tmp_path


@pytest.mark.usefixtures("without_torch")
async def test_the_default_set_leaves_a_torch_model_out_and_serves_the_rest(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    specs, broken = scan_repository(repository, BatchingSettings())
    assert broken == [] and issubclass({s.name: s for s in specs}["zero_shot"].handler_class, ExtraMissing)
    app = build_app(Settings(model_repository=repository), Metrics())
    async with in_process_client(app) as client:
        assert [m["name"] for m in (await client.get("/v1/models")).json()["models"]] == ["colour"]
        assert (await client.get("/ready")).status_code == 200
    assert any("inference-engine[torch]" in str(getattr(r, "reason", "")) for r in caplog.records)


@pytest.mark.usefixtures("without_torch")
async def test_a_torch_model_named_explicitly_fails_naming_the_extra(repository: Path) -> None:
    app = build_app(Settings(model_repository=repository, models=["colour", "zero_shot"]), Metrics())
    async with in_process_client(app) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert "pip install 'inference-engine[torch]'" in ready.json()["models"]["zero_shot"]


async def test_a_failed_conversion_falls_back_to_torch_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fails(state: object, variant: str) -> bytes:
        raise ModelLoadError("the converter broke")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(efficientnet_onnx, "build_onnx", fails)
    add_default_model(tmp_path / "repo")
    app = build_app(Settings(model_repository=tmp_path / "repo"), Metrics())
    with caplog.at_level(logging.WARNING, logger="inference_engine.runtime"):
        async with in_process_client(app) as client:
            assert (await client.get("/ready")).status_code == 200
            metadata = (await client.get("/v2/models/efficientnet_lite0")).json()
            assert metadata["platform"] == "pytorch"
            answer = await client.post(
                "/v1/models/efficientnet_lite0/predict", files={"file": ("cat.jpg", cat_jpeg(), "image/jpeg")}
            )
            assert answer.status_code == 200
    message = "ONNX Runtime path unavailable; serving on torch"
    (warning,) = [r for r in caplog.records if r.getMessage() == message]
    assert warning.reason == "the converter broke"  # type: ignore[attr-defined]


async def test_the_shipped_model_serves_on_onnx_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    add_default_model(tmp_path / "repo")
    app = build_app(Settings(model_repository=tmp_path / "repo"), Metrics())
    async with in_process_client(app) as client:
        assert (await client.get("/ready")).status_code == 200
        assert (await client.get("/v2/models/efficientnet_lite0")).json()["platform"] == "onnxruntime_onnx"
