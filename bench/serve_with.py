"""``inference-engine`` with uvicorn's event loop and HTTP parser chosen from the environment.

For A/B levers only: ``BENCH_UVICORN_LOOP`` (``asyncio``, ``uvloop``) and
``BENCH_UVICORN_HTTP`` (``h11``, ``httptools``) override what uvicorn's ``auto`` would pick
(uvloop and httptools when installed, as they are with ``uvicorn[standard]``);
``BENCH_EAGER_BATCHING=0`` turns eager batch closing off (every batch waits out the delay);
``BENCH_CHANNELS_LAST=0`` runs EfficientNet in the default (NCHW) memory format;
``BENCH_SWITCH_INTERVAL`` sets ``sys.setswitchinterval`` (seconds; Python's default is 0.005).

    python -m bench.serve_with serve --model-repository ...
"""

from __future__ import annotations

import os
import sys
from typing import Any

import uvicorn

_original_init = uvicorn.Config.__init__


def _init(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
    if loop := os.environ.get("BENCH_UVICORN_LOOP"):
        kwargs["loop"] = loop
    if http := os.environ.get("BENCH_UVICORN_HTTP"):
        kwargs["http"] = http
    _original_init(self, *args, **kwargs)


uvicorn.Config.__init__ = _init  # type: ignore[method-assign]

if os.environ.get("BENCH_EAGER_BATCHING") == "0":
    from inference_engine.batching import batcher

    _batcher_init = batcher.DynamicBatcher.__init__

    def _not_eager(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["eager"] = False
        _batcher_init(self, *args, **kwargs)

    batcher.DynamicBatcher.__init__ = _not_eager  # type: ignore[method-assign]

if os.environ.get("BENCH_CHANNELS_LAST") == "0":
    from inference_engine.models.classifier import EfficientNetLiteClassifier

    EfficientNetLiteClassifier.channels_last = False

if interval := os.environ.get("BENCH_SWITCH_INTERVAL"):
    sys.setswitchinterval(float(interval))

if __name__ == "__main__":
    from inference_engine.cli import main

    sys.exit(main(sys.argv[1:]))
