"""The model contract: the core every handler implements, and where each hook runs.

A handler is an abstract base class so that a handler missing a method fails when its folder is
loaded, not on the first request. The batcher only ever calls ``predict`` with a list; it knows
nothing of images or HTTP.

Where each hook runs:

* ``load`` and ``warmup`` and ``unload``: once, on the model instance's own thread.
* ``preprocess``: per request, in the worker pool, concurrently (must be thread-safe).
* ``predict``: per batch, on the model instance's own thread; one entry per input, in order;
  an entry that is an exception fails only that input.
* ``postprocess``: per request (keep it cheap): the classification answer.

Everything beyond classification (image and text embeddings, zero-shot labels, tensor inputs)
is a capability class from :mod:`inference_engine.models.capabilities`; what a handler inherits
is what it answers (:meth:`ModelHandler.capabilities`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from PIL import Image

from inference_engine.models.capabilities import Capabilities, Embedding, Task
from inference_engine.models.config import ModelConfig, ModelFile, PreprocessingConfig

__all__ = [
    "Capabilities",
    "Embedding",
    "ModelConfig",
    "ModelFile",
    "ModelHandler",
    "PreprocessingConfig",
    "Task",
]

ItemT = TypeVar("ItemT")
OutputT = TypeVar("OutputT")


class ModelHandler(ABC, Generic[ItemT, OutputT]):
    """Base class of every model handler, built-in or custom (``model.py``)."""

    #: The runtime this handler executes on, reported as the model's platform; ``backend: auto``
    #: settles to it once the model has loaded.
    runtime_backend: ClassVar[str] = "torch"

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
        """Load weights onto ``device``; called once on this instance's own thread.

        A handler that settles configuration here (pre-processing read from its folder) updates
        ``self.config``; the runtime adopts that copy after the load.
        """

    @abstractmethod
    def preprocess(self, image: Image.Image) -> ItemT:
        """Turn one decoded RGB image into one model input; raise ``InvalidInput`` to refuse it."""

    @abstractmethod
    def predict(self, items: Sequence[ItemT]) -> Sequence[OutputT | BaseException]:
        """Run one batch; return one output per item, in order (an exception fails that item)."""

    @abstractmethod
    def postprocess(self, output: OutputT, *, top_k: int) -> dict[str, Any]:
        """Turn one output into the JSON fields of its answer (e.g. ``{"predictions": [...]}``)."""

    def capabilities(self) -> Capabilities:
        """What this instance answers, once loaded: every capability class it inherits.

        Override only to withhold one that depends on the model folder (no labels configured:
        no classification); a task cannot be added here without its class and hooks.
        """
        return Capabilities.of(self)

    def decode_min_side(self) -> int | None:
        """Shortest side the decoder must keep (JPEG draft mode may decode smaller images)."""
        return self.config.preprocessing.resize

    def warmup(self) -> None:
        """Run representative batches once so the first request is not slow.

        A failure here fails the load: a model that cannot run a dummy batch cannot serve.
        """
        image = Image.new("RGB", (self.config.preprocessing.resize,) * 2, (127, 127, 127))
        item = self.preprocess(image)
        for size in sorted({1, self.config.max_batch_size}):
            self.predict([item] * size)

    def unload(self) -> None:
        """Release resources; called once on shutdown on this instance's own thread."""

    def labels(self) -> list[str]:
        """Class labels, when the model has them."""
        return []

    def scores(self, output: OutputT) -> Embedding:
        """Class probabilities of one image output, aligned with :meth:`labels`.

        The default fits handlers whose outputs are already the probability vector (every
        built-in classifier); the V2 protocol's ``probabilities`` output reads it.
        """
        return np.asarray(output, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """Handler-specific facts added to the model's metadata (the ONNX backend's providers)."""
        return {}
