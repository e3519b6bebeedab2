"""softmax, L2 normalisation and top-k, shared by the ONNX backend, CLIP and the V2 codec."""

from __future__ import annotations

import numpy as np
import pytest

from inference_engine.numerics import l2_normalise, softmax, top_k_predictions


def test_top_k_is_sorted_and_clamped() -> None:
    scores = np.array([0.1, 0.5, 0.05, 0.35], dtype=np.float32)
    ranked = top_k_predictions(scores, ["a", "b", "c", "d"], 3)
    assert [(p["label"], p["index"]) for p in ranked] == [("b", 1), ("d", 3), ("a", 0)]
    assert len(top_k_predictions(scores, ["a", "b", "c", "d"], 50)) == 4
    assert top_k_predictions(scores, [], 1)[0]["label"] == "1"  # no labels: the index as text


def test_softmax_rows_sum_to_one_without_overflow() -> None:
    logits = np.array([[1000.0, 1001.0, 999.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    probabilities = softmax(logits)
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=-1), [1.0, 1.0], atol=1e-6)
    assert int(np.argmax(probabilities[0])) == 1
    np.testing.assert_allclose(probabilities[1], [1 / 3] * 3, atol=1e-6)


def test_l2_normalise_keeps_zero_rows_zero() -> None:
    vectors = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    unit = l2_normalise(vectors)
    np.testing.assert_allclose(unit[0], [0.6, 0.8], atol=1e-6)
    assert unit[1].tolist() == [0.0, 0.0]
    assert float(np.linalg.norm(unit[0])) == pytest.approx(1.0)
