"""What the data plane hands a transport: typed answers, metadata and state, with no HTTP in them.

Plain frozen values built from numpy arrays and builtins, so every transport (native REST, Open
Inference Protocol V2 over REST or gRPC, OpenAI embeddings) formats the same results its own way
without importing a model handler, a runtime or a batcher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from inference_engine.errors import InvalidInput

Modality = Literal["image", "text"]
Vector = npt.NDArray[np.float32]
#: The output tensors a model may answer, by their V2 names.
OutputName = Literal["probabilities", "embeddings"]
OUTPUT_NAMES: tuple[OutputName, ...] = ("probabilities", "embeddings")


@dataclass(frozen=True)
class Route:
    """Which model and version serve a request; ``routed``: chosen by the traffic weights (the
    request named no version), so it may be re-routed, and shadow versions get a copy."""

    model: str
    version: str
    routed: bool = False


@dataclass(frozen=True)
class Prediction:
    """One classified image: the answer's JSON fields (``predictions``) and what it cost."""

    model: str
    model_version: str
    body: dict[str, Any]
    preprocess_s: float
    queue_s: float
    inference_s: float
    batch_size: int
    #: Answered from the output cache; ``None`` where the model keeps none.
    cached: bool | None = None


@dataclass(frozen=True)
class Embeddings:
    """Embeddings for the images or texts of one request, in the order given."""

    model: str
    model_version: str
    modality: Modality
    vectors: list[Vector]
    preprocess_s: float
    queue_s: float
    inference_s: float
    batch_sizes: list[int]
    #: Every input answered from the output cache; ``None`` where the model keeps none.
    cached: bool | None = None

    @property
    def dimension(self) -> int:
        return int(self.vectors[0].shape[0]) if self.vectors else 0

    @property
    def batch_size(self) -> int:
        return max(self.batch_sizes, default=0)


@dataclass(frozen=True)
class Rows:
    """The output tensors for the rows of one request (the V2 protocol's batch), in order.

    ``tensors`` holds each requested output as one ``[rows, ...]`` FP32 array, in the order
    asked for; ``labels`` names the columns of ``probabilities``.
    """

    model: str
    model_version: str
    modality: Modality
    tensors: dict[OutputName, Vector]
    labels: list[str]
    preprocess_s: float
    queue_s: float
    inference_s: float
    batch_sizes: list[int]
    #: Every row answered from the output cache; ``None`` where the model keeps none.
    cached: bool | None = None

    @property
    def batch_size(self) -> int:
        return max(self.batch_sizes, default=0)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor: its V2 name, datatype and shape (``-1``: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    format: str | None = None


@dataclass(frozen=True)
class ModelMetadata:
    """What a model takes and gives; before it has loaded, only what its folder says."""

    name: str
    version: str
    platform: str
    loaded: bool
    tasks: frozenset[str]
    inputs: tuple[TensorSpec, ...]  # encoded images, texts: what every route takes
    tensor_input: TensorSpec | None  # pre-processed pixels, for tensor protocols (V2, gRPC)
    outputs: tuple[TensorSpec, ...]
    input_size: tuple[int, int, int]
    labels_count: int
    embedding_dimension: int | None
    extra: Mapping[str, Any] = field(default_factory=dict)
    versions: tuple[str, ...] = ()  # every version of the model served, oldest first


@dataclass(frozen=True)
class ModelStatus:
    """A model's state as operators read it (``/v1/models``, ``/info``)."""

    name: str
    state: str
    ready: bool
    error: str | None
    reason: str | None  # why it is not ready; None when it is
    # None for a folder that failed validation (there is no configuration to show).
    version: str | None = None
    handler: str | None = None
    device: str | None = None
    dtype: str | None = None
    instances: int | None = None
    batching: Mapping[str, float] | None = None  # max_batch_size, max_batch_delay_ms, max_queue_size
    labels_count: int | None = None
    load_seconds: float | None = None
    warmup_seconds: float | None = None
    # Every version served (or failing), with its state, traffic weight and shadow share.
    versions: tuple[VersionStatus, ...] = ()
    version_policy: str | None = None


@dataclass(frozen=True)
class VersionStatus:
    """One version of a model as operators read it."""

    version: str
    state: str
    ready: bool
    reason: str | None
    traffic: float  # share of the requests that name no version (0..1)
    shadow: float  # share of the model's traffic copied to it (0..1)


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index (Triton's ``/v2/repository/index``)."""

    name: str
    version: str | None
    state: Literal["READY", "UNAVAILABLE", "LOADING", "UNLOADING"]
    reason: str


@dataclass(frozen=True)
class Readiness:
    """Whether the server takes work: every model ready, and not shutting down."""

    draining: bool
    models: Mapping[str, str | None]  # name -> None when ready, else why not

    @property
    def ready(self) -> bool:
        return bool(self.models) and not self.draining and all(r is None for r in self.models.values())

    @property
    def not_ready(self) -> dict[str, str]:
        return {name: reason for name, reason in self.models.items() if reason is not None}


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
