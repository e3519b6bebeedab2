"""A model's configuration: ``model.yaml``'s schema, and the resolved form handlers receive.

``ModelFile`` is what a folder's ``model.yaml`` may say; batching keys left out there take the
server's ``batching`` defaults. The loader resolves one into a :class:`ModelConfig`, where every
value is settled (no ``None`` left to assert on later), and that is the one copy the runtime,
the batcher and the handler share.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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


class CacheConfig(BaseModel):
    """Re-using answers for identical pixels: an output cache and merged duplicates in flight."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = False
    """Keep this model's outputs in an LRU keyed by a hash of the pre-processed input tensor (and
    the model, version and input kind): a photo sent again, or re-encoded to the same pixels
    (PNG for JPEG), is answered without queueing or a forward pass."""
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Bound on the outputs held (their array bytes); the least recently used go past it."""
    merge_in_flight: bool = False
    """Inputs identical to one already queued or running share its forward pass and answer
    (singleflight); each caller keeps its own deadline and cancellation."""


class _ModelFields(BaseModel):
    """What ``model.yaml`` and the resolved configuration share."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, protected_namespaces=())

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    """Name used in URLs (``/v1/models/{name}/predict``); must match the folder name."""
    version: str = "1"
    """Version reported with every answer, for a folder without numbered version folders (with
    them, each version is its folder's name and this key is refused)."""
    handler: str
    """A built-in handler name, or ``model.py:ClassName`` for a custom handler in the folder."""
    backend: Literal["torch", "onnx", "auto"] = "torch"
    """Runtime that executes the network: PyTorch; ONNX Runtime on ``weights`` (an ``.onnx`` file,
    or for ``efficientnet_lite`` its checkpoint, converted at load); or ``auto``: ONNX Runtime
    where the handler converts its own checkpoint (``efficientnet_lite``), falling back to torch
    with the reason logged when that fails, and torch for the other handlers."""
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
    deterministic: bool = True
    """The same input always gives the same output. ``false`` (a model that samples) forbids
    ``cache``: a cached or shared answer would hide the variation the model is for."""
    cache: CacheConfig = Field(default_factory=CacheConfig)
    """Answers re-used for identical pixels (off by default)."""

    @model_validator(mode="after")
    def _cache_needs_determinism(self) -> Any:
        if not self.deterministic and (self.cache.enabled or self.cache.merge_in_flight):
            raise ValueError("cache.enabled and cache.merge_in_flight need deterministic: true")
        return self


class VersionPolicy(BaseModel):
    """Which numbered version folders are served (Triton's three policies; one of them)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    latest: int | None = Field(None, ge=1)
    """Serve the newest N versions."""
    all: bool = False
    """Serve every version."""
    specific: list[int] | None = Field(None, min_length=1)
    """Serve exactly these versions."""

    @model_validator(mode="before")
    @classmethod
    def _from_word(cls, value: Any) -> Any:
        return {"all": True} if value == "all" else value

    @model_validator(mode="after")
    def _one_policy(self) -> VersionPolicy:
        chosen = [self.latest is not None, self.all, self.specific is not None]
        if sum(chosen) > 1:
            raise ValueError("give one of latest, all or specific")
        if not any(chosen):
            self.latest = 1
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of ``available``, oldest first."""
        ordered = sorted(available)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in set(self.specific)]
        return ordered[-(self.latest or 1) :]

    def describe(self) -> str:
        if self.all:
            return "all"
        if self.specific is not None:
            return "specific: " + ", ".join(str(v) for v in self.specific)
        return f"latest: {self.latest}"


class CudaOverrides(BaseModel):
    """Values for when the model runs on a GPU, laid over the file's (CPU) values.

    Batch sizes measured on two CPU cores are wrong on a GPU by an order of magnitude: a GPU's
    throughput keeps rising to batches of 32-256, where a CPU's peaks at 2-8. One ``model.yaml``
    serves both images, so the GPU values sit beside the CPU ones and the device picks.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_batch_size: int | None = Field(None, ge=1, le=4096)
    """Largest batch on a GPU."""
    max_batch_delay_ms: float | None = Field(None, ge=0)
    """Batch delay on a GPU (a larger batch is worth a longer wait)."""
    max_queue_size: int | None = Field(None, ge=1)
    """Queue bound on a GPU (a few batches' worth)."""
    instances: int | None = Field(None, ge=1, le=64)
    """Model copies on a GPU (usually 1: one copy keeps the device busy with large batches)."""
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    """Weights' type on a GPU (``float16`` halves memory and doubles tensor-core throughput)."""


class ModelFile(_ModelFields):
    """The schema of ``models/<name>/model.yaml``."""

    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    """Which numbered version folders are served: ``{latest: N}``, ``all`` or ``{specific: [..]}``."""
    traffic: dict[str, float] | None = None
    """Weights of the served versions for requests that name none (``{"1": 90, "2": 10}``);
    default: every request to the newest version."""
    shadow: dict[str, float] | None = None
    """Percentage of the model's traffic copied to a version as well (``{"2": 100}``); the
    caller gets only the primary answer, and their agreement is exported as metrics."""

    max_batch_size: int | None = Field(None, ge=1, le=4096)
    """Overrides ``batching.max_batch_size`` for this model."""
    max_batch_delay_ms: float | None = Field(None, ge=0)
    """Overrides ``batching.max_batch_delay_ms`` for this model."""
    max_queue_size: int | None = Field(None, ge=1)
    """Overrides ``batching.max_queue_size`` for this model."""
    batch_delay: Literal["fixed", "adaptive"] | None = None
    """Overrides ``batching.batch_delay`` for this model."""
    admission: Literal["predictive", "queue_only"] | None = None
    """Overrides ``batching.admission`` for this model."""
    cuda: CudaOverrides | None = None
    """Values that replace the ones above when the model runs on CUDA (``device: cuda``, ``cuda:N``,
    or ``auto`` on a machine with a GPU): ``max_batch_size``, ``max_batch_delay_ms``,
    ``max_queue_size``, ``instances``, ``dtype``. The top-level values are the CPU ones."""


class ModelConfig(_ModelFields):
    """A model's settled configuration: ``model.yaml`` with the server's batching defaults filled in.

    Handlers receive this; a handler that settles more at load (pre-processing read from a
    Hugging Face folder) hands back its copy and the runtime adopts it.
    """

    max_batch_size: int = Field(8, ge=1, le=4096)
    """Largest batch handed to one forward pass."""
    max_batch_delay_ms: float = Field(20.0, ge=0)
    """How long a batch may wait for more items after its first item arrived."""
    max_queue_size: int = Field(256, ge=1)
    """Requests that may wait for this model; past it new requests get 503 with Retry-After."""
    batch_delay: Literal["fixed", "adaptive"] = "adaptive"
    """How a forming batch's wait is chosen: ``fixed`` (``max_batch_delay_ms``) or ``adaptive``
    (from the measured arrival gap and per-batch cost, within ``max_batch_delay_ms``)."""
    admission: Literal["predictive", "queue_only"] = "predictive"
    """``predictive``: refuse at once an input predicted to miss its deadline; ``queue_only``:
    refuse only when the queue is full."""
