"""The model contract: ``model.yaml``'s schema and the handler base class.

A handler is an abstract base class so that a handler missing a method fails when its folder is
loaded, not on the first request. The batcher only ever calls ``predict`` with a list; it knows
nothing of images or HTTP.

Where each hook runs:

* ``load`` and ``warmup`` and ``unload``: once, on the model instance's own thread.
* ``preprocess``: per request, in the worker pool, concurrently (must be thread-safe).
* ``predict``: per batch, on the model instance's own thread; one entry per input, in order;
  an entry that is an exception fails only that input.
* ``postprocess``: per request, on the event loop (keep it cheap).

Beyond classification a handler may declare more :data:`Task` values in :meth:`ModelHandler.tasks`
and implement their hooks: ``embed_image`` (``embed`` turns an image output into an embedding),
``embed_text`` (``preprocess_text`` and ``predict_text``: a text tower, batched by its own
batcher on the same instance threads), and ``zero_shot`` (``rank_labels`` scores an image output
against label embeddings that came out of the text tower). A hook a handler does not declare
answers :class:`~inference_engine.errors.UnsupportedTask` (400).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from inference_engine.errors import InvalidInput, UnsupportedTask

ItemT = TypeVar("ItemT")
OutputT = TypeVar("OutputT")

Task = Literal["classify", "embed_image", "embed_text", "zero_shot"]
Embedding = npt.NDArray[np.float32]


class PreprocessingConfig(BaseModel):
    """How an RGB image becomes the model's input tensor."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    resize: int = Field(256, ge=1)
    """Shorter side after resizing (both sides with ``resize_mode: stretch``), before the crop."""
    resize_mode: Literal["shorter_side", "stretch"] = "shorter_side"
    """``shorter_side`` keeps the aspect ratio; ``stretch`` resizes to a ``resize`` square."""
    crop: int = Field(224, ge=1)
    """Side of the square centre crop fed to the model."""
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bicubic"
    """Resampling filter for the resize."""
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    """Per-channel value subtracted from 0..255 pixels."""
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    """Per-channel divisor applied after the mean."""
    channel_order: Literal["rgb", "bgr"] = "rgb"
    """Channel order the network expects (Caffe-trained networks such as open_nsfw want BGR);
    ``mean`` and ``std`` are given in this order."""
    layout: Literal["nchw", "nhwc"] = "nchw"
    """Tensor layout of one input: channels first (PyTorch) or last (TensorFlow/Caffe exports)."""

    @field_validator("crop")
    @classmethod
    def _crop_fits(cls, crop: int, info: Any) -> int:
        resize = info.data.get("resize")
        if resize is not None and crop > resize:
            raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")
        return crop


class ModelConfig(BaseModel):
    """The schema of ``models/<name>/model.yaml``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, protected_namespaces=())

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    """Name used in URLs (``/v1/models/{name}/predict``); must match the folder name."""
    version: str = "1"
    """Version reported with every answer."""
    handler: str
    """A built-in handler name, or ``model.py:ClassName`` for a custom handler in the folder."""
    backend: Literal["torch", "onnx"] = "torch"
    """Runtime that executes the network: PyTorch, or ONNX Runtime on ``weights`` (an ``.onnx`` file)."""
    weights: str | None = None
    """Weights: a file or folder relative to the model folder (or absolute), a Hugging Face hub id
    for handlers that load from the hub, or ``null`` where the handler knows (packaged weights)."""
    device: str = "cpu"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Floating-point type of the weights and inputs."""
    labels: str | list[str] | None = None
    """``imagenet``, a text file in the folder (one label per line), or an inline list."""
    top_k: int = Field(5, ge=1)
    """Default number of predictions answered; a request may ask for another ``top_k``."""
    max_batch_size: int | None = Field(None, ge=1, le=4096)
    """Overrides ``batching.max_batch_size`` for this model."""
    max_batch_delay_ms: float | None = Field(None, ge=0)
    """Overrides ``batching.max_batch_delay_ms`` for this model."""
    max_queue_size: int | None = Field(None, ge=1)
    """Overrides ``batching.max_queue_size`` for this model."""
    label_cache_size: int = Field(1024, ge=0, le=1_000_000)
    """Zero-shot models: label embeddings kept for labels that requests bring (LRU; 0 keeps none)."""
    intra_op_threads: int | None = Field(None, ge=1, le=256)
    """Threads one forward pass may use (torch intra-op, ONNX Runtime intra-op); null: one per core."""
    instances: int = Field(1, ge=1, le=64)
    """Model copies, each with its own thread, fed from the same queue."""
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    """Image pre-processing."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Handler-specific settings."""


class ModelHandler(ABC, Generic[ItemT, OutputT]):
    """Base class of every model handler, built-in or custom (``model.py``)."""

    def __init__(self, config: ModelConfig, model_dir: Path) -> None:
        self.config = config
        self.model_dir = model_dir

    @classmethod
    def weights_missing(cls, config: ModelConfig, model_dir: Path) -> str | None:
        """Why this model's weights are not on this machine, or ``None`` when they are (or unknown).

        Checked before loading, without the network: a model whose weights are absent is left
        out of the default served set (with this reason in the log) instead of failing
        readiness; named explicitly (``--model``), it is loaded and fails with the same reason.
        """
        return None

    @abstractmethod
    def load(self, device: str) -> None:
        """Load weights onto ``device``; called once on this instance's own thread."""

    @abstractmethod
    def preprocess(self, image: Image.Image) -> ItemT:
        """Turn one decoded RGB image into one model input; raise ``InvalidInput`` to refuse it."""

    @abstractmethod
    def predict(self, items: Sequence[ItemT]) -> Sequence[OutputT | BaseException]:
        """Run one batch; return one output per item, in order (an exception fails that item)."""

    @abstractmethod
    def postprocess(self, output: OutputT, *, top_k: int) -> dict[str, Any]:
        """Turn one output into the JSON fields of its answer (e.g. ``{"predictions": [...]}``)."""

    def decode_min_side(self) -> int | None:
        """Shortest side the decoder must keep (JPEG draft mode may decode smaller images)."""
        return self.config.preprocessing.resize

    def warmup(self) -> None:
        """Run representative batches once so the first request is not slow.

        A failure here fails the load: a model that cannot run a dummy batch cannot serve.
        """
        image = Image.new("RGB", (self.config.preprocessing.resize,) * 2, (127, 127, 127))
        item = self.preprocess(image)
        for size in sorted({1, self.config.max_batch_size or 1}):
            self.predict([item] * size)

    def unload(self) -> None:
        """Release resources; called once on shutdown on this instance's own thread."""

    def labels(self) -> list[str]:
        """Class labels, when the model has them."""
        return []

    # -- optional tasks ----------------------------------------------------------------------

    def tasks(self) -> frozenset[Task]:
        """What this model answers; the routes refuse the rest with 400 ``unsupported_task``."""
        return frozenset({"classify"})

    accepts_tensors: bool = False
    """True where one model input is exactly the pre-processed ``[3, crop, crop]`` float array
    (``[crop, crop, 3]`` for NHWC), so clients may send tensors instead of encoded images."""

    def tensor_item(self, row: npt.NDArray[np.float32]) -> ItemT:
        """One pre-processed input sent as a tensor (V2 ``FP32``), checked against the input size."""
        if not self.accepts_tensors:
            raise self._unsupported("pre-processed tensors (send encoded images)")
        size = self.config.preprocessing.crop
        expected = (size, size, 3) if self.config.preprocessing.layout == "nhwc" else (3, size, size)
        if tuple(row.shape) != expected:
            raise InvalidInput(f"each tensor row must have shape {list(expected)}, got {list(row.shape)}")
        if not np.isfinite(row).all():
            raise InvalidInput("the tensor holds NaN or infinite values")
        item: ItemT = np.ascontiguousarray(row, dtype=np.float32)  # type: ignore[assignment]
        return item

    def scores(self, output: OutputT) -> Embedding:
        """Class probabilities of one image output, aligned with :meth:`labels` (task ``classify``).

        The default fits handlers whose outputs are already the probability vector (every
        built-in classifier); the V2 protocol's ``probabilities`` output and its classification
        extension read it.
        """
        if "classify" not in self.tasks():
            raise self._unsupported("class probabilities")
        return np.asarray(output, dtype=np.float32)

    def embed(self, output: OutputT) -> Embedding:
        """The embedding of one image output (task ``embed_image``), L2-normalised."""
        raise self._unsupported("image embeddings")

    def embedding_dimension(self) -> int | None:
        """Length of the embeddings this model answers, when it answers any."""
        return None

    def preprocess_text(self, prompts: Sequence[str]) -> Any:
        """Tokenise one text item: several prompts whose embeddings are averaged (task ``embed_text``).

        Runs in the worker pool, like ``preprocess``.
        """
        raise self._unsupported("text embeddings")

    def predict_text(self, items: Sequence[Any]) -> Sequence[Embedding | BaseException]:
        """One L2-normalised embedding per text item, in order; on the instance's own thread."""
        raise self._unsupported("text embeddings")

    def label_prompts(self, label: str) -> list[str]:
        """The prompts whose averaged embedding stands for ``label`` in zero-shot classification."""
        return [label]

    def rank_labels(
        self, output: OutputT, label_embeddings: Embedding, labels: Sequence[str], *, top_k: int
    ) -> dict[str, Any]:
        """Zero-shot answer: score one image output against ``labels`` (task ``zero_shot``)."""
        raise self._unsupported("zero-shot labels")

    def _unsupported(self, what: str) -> UnsupportedTask:
        offered = ", ".join(sorted(self.tasks()))
        return UnsupportedTask(f"model {self.config.name} does not answer {what} (it answers: {offered})")

    def metadata(self) -> dict[str, Any]:
        """Inputs, outputs and labels, as ``GET /v1/models/{name}`` shows them."""
        pre = self.config.preprocessing
        size = pre.crop
        labels = self.labels()
        outputs: list[dict[str, Any]] = []
        if "classify" in self.tasks():
            outputs.append({"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]})
        if self.tasks() & {"embed_image", "embed_text"}:
            dimension = self.embedding_dimension()
            outputs.append({"name": "embeddings", "datatype": "FP32", "shape": [-1, dimension]})
        inputs: list[dict[str, Any]] = [
            {"name": "image", "datatype": "BYTES", "shape": [-1], "format": "encoded image"}
        ]
        if "embed_text" in self.tasks():
            inputs.append({"name": "text", "datatype": "BYTES", "shape": [-1], "format": "UTF-8 text"})
        return {
            "inputs": inputs,
            "outputs": outputs,
            "input_size": [size, size, 3] if pre.layout == "nhwc" else [3, size, size],
            "labels_count": len(labels),
            "tasks": sorted(self.tasks()),
        }
