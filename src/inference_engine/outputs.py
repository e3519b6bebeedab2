"""Output tensors of a request's rows: which a model answers, and building them from raw outputs.

The V2 protocol names its outputs (``probabilities``, ``embeddings``); what a model can answer
follows from its capabilities, and every check here runs before any input is queued.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from inference_engine.answers import OUTPUT_NAMES, Modality, OutputName, Vector
from inference_engine.errors import BadRequest
from inference_engine.models.base import Capabilities, ModelHandler
from inference_engine.models.capabilities import TensorInput


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
) -> Vector:
    """One output tensor ``[rows, ...]`` from the rows' raw outputs (checked by check_outputs)."""
    if output == "probabilities":
        return np.stack([handler.scores(o) for o in raw]).astype(np.float32, copy=False)
    if modality == "text":
        return np.stack(raw).astype(np.float32, copy=False)
    assert offered.image_embedder is not None
    return np.stack([offered.image_embedder.embed(o) for o in raw]).astype(np.float32, copy=False)


def tensor_items(checker: TensorInput, rows: Sequence[npt.NDArray[np.float32]]) -> list[Any]:
    """Every pre-processed row checked and made contiguous (worker pool: it copies arrays)."""
    return [checker.tensor_item(row) for row in rows]
