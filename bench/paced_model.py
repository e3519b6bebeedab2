"""The bench's tiny CNN with a paced forward pass: a custom handler (``model.py:PacedTinyCNN``).

``bench.workloads`` copies this file into the ``tiny_cnn_paced`` model folder as ``model.py``.
It is the built-in TorchScript classifier (the tiny CNN's weights, pre-processing and answers)
whose ``predict`` then sleeps until the pass has taken ``pass_fixed_ms + pass_per_item_ms x
batch size`` (``options`` in ``model.yaml``). A sleep releases the GIL and uses no CPU, so the
model's capacity is known and does not move with what else the cores do, while decoding, HTTP
and the queue work as they do for any model: the model is the bottleneck, which is where fair
queuing and predictive admission act (``bench.fairness``, ``bench.admission``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from inference_engine.models.classifier import TorchScriptClassifier


class PacedTinyCNN(TorchScriptClassifier):
    """A TorchScript classifier whose forward pass takes at least a configured time."""

    def predict(self, items: Sequence[Any]) -> Sequence[Any]:
        started = time.perf_counter()
        outputs = super().predict(items)
        options = self.config.options
        target_s = (
            float(options.get("pass_fixed_ms", 0.0))
            + float(options.get("pass_per_item_ms", 0.0)) * len(items)
        ) / 1000.0
        left = target_s - (time.perf_counter() - started)
        if left > 0:
            time.sleep(left)
        return outputs
