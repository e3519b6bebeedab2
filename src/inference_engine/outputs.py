"""Output tensors of a request's rows: which a model answers, and building them from raw outputs.

The V2 protocol names its outputs (``probabilities``, ``embeddings``); what a model can answer
follows from its capabilities, and every check of a request here runs before any input is queued.

What comes back is checked too, where outputs become answers: a model bug (NaN from an overflow,
a head with the wrong number of classes) would otherwise reach clients as ``null`` scores (orjson
writes NaN as ``null``) or as a confident wrong answer. A vector that is not finite, or not the
length the model declares (its labels, its embedding dimension), fails that request alone with
``500 model_failed`` and an ERROR line naming the model; the checks are whole-array numpy
operations, cheap enough for the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from inference_engine.answers import OUTPUT_NAMES, Modality, OutputName, Vector
from inference_engine.errors import BadRequest, ModelFailed
from inference_engine.models.base import Capabilities, ModelHandler
from inference_engine.models.capabilities import TensorInput

logger = logging.getLogger("inference_engine.outputs")


def known_outputs(outputs: Sequence[str] | None) -> list[OutputName]:
    """The requested output names, refused (400) before any work when one is unknown."""
    known: list[OutputName] = []
    for name in outputs or ():
        if name not in OUTPUT_NAMES:
            raise BadRequest(f"unknown output {name[:64]!r}; outputs are: {', '.join(OUTPUT_NAMES)}")
        known.append(name)
    return known


def default_outputs(offered: Capabilities, modality: Modality) -> list[OutputName]:
    """What a model answers for rows of ``modality`` when the request names no output."""
    if modality == "text":
        return ["embeddings"]
    names: list[OutputName] = []
    if offered.classify:
        names.append("probabilities")
    if offered.image_embedder is not None:
        names.append("embeddings")
    return names


def check_outputs(offered: Capabilities, modality: Modality, wanted: Sequence[OutputName], name: str) -> None:
    for output in wanted:
        if output == "probabilities":
            if modality == "text":
                raise BadRequest("output 'probabilities' needs an image input")
            offered.require("classify", name)
        elif modality == "image":
            offered.require("embed_image", name)


def output_tensor(
    handler: ModelHandler[Any, Any],
    offered: Capabilities,
    modality: Modality,
    output: OutputName,
    raw: list[Any],
    name: str,
) -> Vector:
    """One output tensor ``[rows, ...]`` from the rows' raw outputs (checked by check_outputs).

    Each row must be finite and as long as model ``name`` declares (500 ``model_failed``
    otherwise): its labels for ``probabilities``, its embedding dimension for ``embeddings``.
    """
    if output == "probabilities":
        rows = [handler.scores(o) for o in raw]
        return _checked_rows(rows, len(handler.labels()) or None, output, name)
    if modality == "text":
        assert offered.text_encoder is not None
        return _checked_rows(raw, offered.text_encoder.embedding_dimension(), output, name)
    assert offered.image_embedder is not None
    rows = [offered.image_embedder.embed(o) for o in raw]
    return _checked_rows(rows, offered.image_embedder.embedding_dimension(), output, name)


def _checked_rows(rows: Sequence[Any], size: int | None, what: str, model: str) -> Vector:
    """``rows`` stacked into a float32 ``[rows, size]`` tensor, or 500 ``model_failed``.

    ``size`` ``None`` (no labels, a dimension not known) checks only that the rows agree and are
    finite. The loop is over rows, for their shapes; the values are checked in one numpy pass.
    Converting to float32 happens first, so a float64 value beyond float32's range counts as
    infinite: that is what a client would receive.
    """
    shapes = sorted({np.shape(row) for row in rows})
    found = ", ".join(str(list(shape)) for shape in shapes)
    if size is None and len(shapes) > 1:
        raise _refused(model, what, f"the model returned {what} of different shapes: {found}")
    if size is not None and shapes != [(size,)]:
        raise _refused(model, what, f"the model returned {what} of shape {found}; it declares [{size}]")
    tensor = np.stack(rows).astype(np.float32, copy=False)
    if not np.isfinite(tensor).all():
        raise _refused(model, what, f"the model returned {what} that are not finite (NaN or infinity)")
    return tensor


def _refused(model: str, what: str, problem: str) -> ModelFailed:
    """The error for a bad output, logged here: the client's 500 alone does not say which model."""
    logger.error(
        "model returned an invalid output", extra={"model": model, "output": what, "problem": problem}
    )
    return ModelFailed(problem)


def tensor_items(checker: TensorInput, rows: Sequence[npt.NDArray[np.float32]]) -> list[Any]:
    """Every pre-processed row checked and made contiguous (worker pool: it copies arrays)."""
    return [checker.tensor_item(row) for row in rows]
