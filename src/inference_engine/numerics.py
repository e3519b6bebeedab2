"""The small numpy functions every layer shares: softmax, L2 normalisation and top-k.

numpy only, so the ONNX Runtime backend and the V2 protocol's classification extension use them
without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]


def softmax(logits: Array) -> Array:
    """Row-wise softmax, shifted by the row maximum so large logits do not overflow."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    result: Array = shifted / shifted.sum(axis=-1, keepdims=True)
    return result


def l2_normalise(vectors: Array) -> Array:
    """Rows scaled to unit length (a zero row stays zero rather than becoming NaN)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    result: Array = vectors / np.maximum(norms, 1e-12)
    return result


def top_k_predictions(probabilities: Array, labels: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    """The ``top_k`` highest scores as ``{"label", "index", "score"}``, best first."""
    k = min(top_k, probabilities.shape[0])
    candidates = np.argpartition(-probabilities, k - 1)[:k]
    ranked = candidates[np.argsort(-probabilities[candidates], kind="stable")]
    return [
        {
            "label": labels[i] if i < len(labels) else str(i),
            "index": int(i),
            "score": float(probabilities[i]),
        }
        for i in ranked
    ]
