"""A served model described for transports: its tensors and tasks, and its state for operators.

Built from the runtime in one place, so the native model page, the V2 metadata route and the
gRPC service show the same inputs and outputs (``-1`` for any size not known).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from inference_engine.answers import ModelMetadata, ModelStatus, TensorSpec, VersionStatus
from inference_engine.models.base import ModelConfig, ModelHandler
from inference_engine.routing import ServedModel
from inference_engine.runtime import ModelRuntime

#: V2's ``platform`` per backend.
PLATFORMS = {"torch": "pytorch", "onnx": "onnxruntime_onnx"}

IMAGE_INPUT = TensorSpec("image", "BYTES", (-1,), "encoded image")
TEXT_INPUT = TensorSpec("text", "BYTES", (-1,), "UTF-8 text")


def model_metadata(runtime: ModelRuntime) -> ModelMetadata:
    """The tensors ``runtime`` takes and gives; only the image input until it has loaded."""
    return describe_model(runtime.config, runtime.handlers[0] if runtime.handlers else None)


def describe_model(config: ModelConfig, handler: ModelHandler[Any, Any] | None) -> ModelMetadata:
    """The tensors a model with ``config`` takes and gives, once ``handler`` has loaded."""
    pre = config.preprocessing
    size = pre.crop
    input_size = (size, size, 3) if pre.layout == "nhwc" else (3, size, size)
    offered = handler.capabilities() if handler is not None else None
    inputs = [IMAGE_INPUT]
    outputs: list[TensorSpec] = []
    labels_count, dimension, extra = 0, None, {}
    tensor_input: TensorSpec | None = None
    if handler is not None and offered is not None:
        labels_count = len(handler.labels())
        dimension = offered.embedding_dimension
        extra = handler.describe()
        if offered.tensor_input is not None:
            tensor_input = TensorSpec("pixel_values", "FP32", (-1, *input_size))
        if offered.text_encoder is not None:
            inputs.append(TEXT_INPUT)
        if offered.classify:
            outputs.append(TensorSpec("probabilities", "FP32", (-1, labels_count)))
        if offered.image_embedder is not None or offered.text_encoder is not None:
            outputs.append(TensorSpec("embeddings", "FP32", (-1, dimension or -1)))
    return ModelMetadata(
        name=config.name,
        version=config.version,
        platform=PLATFORMS.get(config.backend, "pytorch"),
        loaded=offered is not None,
        tasks=offered.tasks if offered is not None else frozenset(),
        inputs=tuple(inputs),
        tensor_input=tensor_input,
        outputs=tuple(outputs),
        input_size=input_size,
        labels_count=labels_count,
        embedding_dimension=dimension,
        extra=extra,
    )


def model_status(model: ServedModel) -> ModelStatus:
    """State, configuration summary and load times of a model (of the version that describes
    it), and the state, traffic and shadow share of every version."""
    versions = tuple(
        VersionStatus(
            version=v,
            state=r.state.value,
            ready=r.ready,
            reason=_reason(r),
            traffic=model.plan.traffic.get(v, 0.0),
            shadow=model.plan.shadow.get(v, 0.0),
        )
        for v, r in model.versions.items()
    )
    runtime = model.primary
    if model.unloaded:
        return ModelStatus(
            model.name, "unloaded", False, None, "it is unloaded", version_policy=model.plan.policy
        )
    if runtime is None:
        return ModelStatus(model.name, "failed", False, model.error, model.not_ready_reason())
    state, ready, reason = runtime.state.value, model.ready, None if model.ready else model.not_ready_reason()
    if runtime.spec is None:
        return ModelStatus(model.name, state, ready, runtime.error, reason, versions=versions)
    config = runtime.config
    return ModelStatus(
        name=model.name,
        state=state,
        ready=ready,
        error=runtime.error,
        reason=reason,
        version=config.version,
        handler=config.handler,
        device=config.device,
        dtype=config.dtype,
        instances=config.instances,
        batching=dataclasses.asdict(runtime.policy()),
        labels_count=len(runtime.handlers[0].labels()) if runtime.handlers else None,
        load_seconds=runtime.load_seconds,
        warmup_seconds=runtime.warmup_seconds,
        versions=versions,
        version_policy=model.plan.policy,
    )


def _reason(runtime: ModelRuntime) -> str | None:
    return None if runtime.ready else runtime.not_ready_reason()
