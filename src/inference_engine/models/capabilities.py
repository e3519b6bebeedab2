"""What a model can do beyond the core contract, and the one place that says so.

A handler gains a task by inheriting its capability class and implementing its hooks (an
abstract hook left out fails the load, not the first request):

* :class:`ImageEmbedder`: ``embed_image``: an image output becomes an embedding.
* :class:`TextEncoder`: ``embed_text``: a text tower, batched on its own on the same threads.
* :class:`ZeroShot`: ``zero_shot``: an image output ranked against label embeddings from the
  text tower (so it is a :class:`TextEncoder` too).
* :class:`TensorInput`: clients may send the pre-processed array instead of an encoded image.

``classify`` (``postprocess`` without labels) is in the core contract. :class:`Capabilities`
is what a loaded instance offers: built from the classes it inherits, narrowed only where the
model folder withholds one (CLIP without configured labels does not classify), so the task
list is never declared twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from inference_engine.errors import InvalidInput, UnsupportedTask

if TYPE_CHECKING:
    from inference_engine.models.config import ModelConfig

Task = Literal["classify", "embed_image", "embed_text", "zero_shot"]
Embedding = npt.NDArray[np.float32]

_WHAT: dict[Task, str] = {
    "classify": "classification without labels (send 'labels' for zero-shot)",
    "zero_shot": "zero-shot labels",
    "embed_image": "image embeddings",
    "embed_text": "text embeddings",
}


class ImageEmbedder(ABC):
    """Task ``embed_image``: the embedding of an image output."""

    @abstractmethod
    def embed(self, output: Any) -> Embedding:
        """The L2-normalised embedding of one image output."""

    @abstractmethod
    def embedding_dimension(self) -> int | None:
        """Length of the embeddings (``None`` until loaded)."""


class TextEncoder(ABC):
    """Task ``embed_text``: a text tower in the image tower's embedding space."""

    @abstractmethod
    def preprocess_text(self, prompts: Sequence[str]) -> Any:
        """Tokenise one text item: prompts whose embeddings are averaged (worker pool)."""

    @abstractmethod
    def predict_text(self, items: Sequence[Any]) -> Sequence[Embedding | BaseException]:
        """One L2-normalised embedding per text item, in order (the instance's own thread)."""

    @abstractmethod
    def embedding_dimension(self) -> int | None:
        """Length of the embeddings (``None`` until loaded)."""


class ZeroShot(TextEncoder):
    """Task ``zero_shot``: rank an image output against label embeddings from the text tower."""

    def label_prompts(self, label: str) -> list[str]:
        """The prompts whose averaged embedding stands for ``label``."""
        return [label]

    @abstractmethod
    def rank_labels(
        self, output: Any, label_embeddings: Embedding, labels: Sequence[str], *, top_k: int
    ) -> dict[str, Any]:
        """The answer for one image output scored against ``labels`` (``{"predictions": [...]}``)."""


class TensorInput:
    """One model input is exactly the pre-processed ``[3, crop, crop]`` array (``[crop, crop, 3]``
    for NHWC), so clients may send tensors (V2 ``FP32``) instead of encoded images."""

    config: ModelConfig

    def tensor_shape(self) -> tuple[int, int, int]:
        pre = self.config.preprocessing
        return (pre.crop, pre.crop, 3) if pre.layout == "nhwc" else (3, pre.crop, pre.crop)

    def tensor_item(self, row: npt.NDArray[np.float32]) -> Any:
        """One pre-processed input, checked against the input size (worker pool)."""
        expected = self.tensor_shape()
        if tuple(row.shape) != expected:
            raise InvalidInput(f"each tensor row must have shape {list(expected)}, got {list(row.shape)}")
        if not np.isfinite(row).all():
            raise InvalidInput("the tensor holds NaN or infinite values")
        return np.ascontiguousarray(row, dtype=np.float32)


@dataclass(frozen=True)
class Capabilities:
    """What one loaded model offers; the presence of each part is its task."""

    classify: bool = True
    image_embedder: ImageEmbedder | None = None
    text_encoder: TextEncoder | None = None
    zero_shot: ZeroShot | None = None
    tensor_input: TensorInput | None = None

    @classmethod
    def of(cls, handler: object) -> Capabilities:
        """Everything ``handler``'s classes provide."""
        return cls(
            image_embedder=handler if isinstance(handler, ImageEmbedder) else None,
            text_encoder=handler if isinstance(handler, TextEncoder) else None,
            zero_shot=handler if isinstance(handler, ZeroShot) else None,
            tensor_input=handler if isinstance(handler, TensorInput) else None,
        )

    def without(self, *tasks: Task) -> Capabilities:
        """The same, less ``tasks`` (what a model folder withholds)."""
        changes: dict[str, Any] = {}
        for task in tasks:
            if task == "classify":
                changes["classify"] = False
            elif task == "embed_image":
                changes["image_embedder"] = None
            elif task == "embed_text":
                changes["text_encoder"] = None
                changes["zero_shot"] = None  # ranking labels needs the text tower
            else:
                changes["zero_shot"] = None
        return replace(self, **changes)

    @property
    def tasks(self) -> frozenset[Task]:
        present: dict[Task, bool] = {
            "classify": self.classify,
            "embed_image": self.image_embedder is not None,
            "embed_text": self.text_encoder is not None,
            "zero_shot": self.zero_shot is not None,
        }
        return frozenset(task for task, here in present.items() if here)

    @property
    def embedding_dimension(self) -> int | None:
        encoder = self.image_embedder or self.text_encoder
        return encoder.embedding_dimension() if encoder is not None else None

    def require(self, task: Task, model: str) -> None:
        """Refuse (400 ``unsupported_task``) what this model does not answer."""
        if task not in self.tasks:
            offered = ", ".join(sorted(self.tasks))
            raise UnsupportedTask(f"model {model} does not answer {_WHAT[task]} (it answers: {offered})")

    def requiring_image_embedder(self, model: str) -> ImageEmbedder:
        self.require("embed_image", model)
        assert self.image_embedder is not None
        return self.image_embedder

    def requiring_text_encoder(self, model: str) -> TextEncoder:
        self.require("embed_text", model)
        assert self.text_encoder is not None
        return self.text_encoder

    def requiring_zero_shot(self, model: str) -> ZeroShot:
        self.require("zero_shot", model)
        assert self.zero_shot is not None
        return self.zero_shot

    def requiring_tensor_input(self, model: str) -> TensorInput:
        if self.tensor_input is None:
            offered = ", ".join(sorted(self.tasks))
            raise UnsupportedTask(
                f"model {model} does not answer pre-processed tensors (send encoded images) "
                f"(it answers: {offered})"
            )
        return self.tensor_input
