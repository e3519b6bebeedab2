"""What the data plane hands a transport: answers with their costs, and the bounds on text input.

Plain frozen values with no HTTP in them, so every transport (native REST, Open Inference
Protocol V2, OpenAI embeddings) formats the same results its own way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inference_engine.errors import InvalidInput
from inference_engine.models.base import Embedding, ModelHandler
from inference_engine.runtime import Modality


@dataclass(frozen=True)
class Prediction:
    """What a transport needs to format one answer."""

    model: str
    model_version: str
    body: dict[str, Any]
    preprocess_s: float
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass(frozen=True)
class Embeddings:
    """Embeddings for the images or texts of one request, in the order given."""

    model: str
    model_version: str
    modality: Modality
    vectors: list[Embedding]
    preprocess_s: float
    queue_s: float
    inference_s: float
    batch_sizes: list[int]

    @property
    def dimension(self) -> int:
        return int(self.vectors[0].shape[0]) if self.vectors else 0


@dataclass(frozen=True)
class Rows:
    """Raw outputs for the inputs of one request, in order, and the handler that made them."""

    model: str
    model_version: str
    modality: Modality
    handler: ModelHandler[Any, Any]
    outputs: list[Any]
    preprocess_s: float
    queue_s: float
    inference_s: float
    batch_sizes: list[int]


@dataclass(frozen=True)
class TextLimits:
    """Bounds on the texts and labels a request may bring, and the checks that enforce them."""

    max_items: int = 64
    max_labels: int = 256
    max_chars: int = 2000

    def check_text(self, text: object, what: str) -> str:
        """One text or label as given, refused (422) when empty or longer than ``max_chars``."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput(f"each {what} must be a non-empty string")
        if len(text) > self.max_chars:
            raise InvalidInput(
                f"a {what} of {len(text)} characters is longer than the limit of {self.max_chars}"
            )
        return text

    def check_labels(self, labels: Sequence[str]) -> list[str]:
        """Zero-shot labels as given, refused (422) when empty, too many, too long or repeated."""
        if not labels:
            raise InvalidInput("'labels' must name at least one label")
        if len(labels) > self.max_labels:
            raise InvalidInput(f"{len(labels)} labels; the limit is {self.max_labels}")
        checked = [self.check_text(label, "label") for label in labels]
        if len(set(checked)) != len(checked):
            raise InvalidInput("'labels' must not repeat a label")
        return checked


@dataclass(frozen=True)
class InputRun:
    """One input's output from a batch, and what it cost."""

    output: Any
    preprocess_s: float
    queue_s: float
    inference_s: float
    batch_size: int
