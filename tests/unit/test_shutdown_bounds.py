"""Shutdown is bounded whatever a model thread does: a hung forward pass cannot hold the exit."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from inference_engine.batching import ModelWorker
from inference_engine.errors import ModelNotReady, ShuttingDown
from inference_engine.imaging import ImageLimits
from inference_engine.metrics import Metrics
from inference_engine.models.loader import scan_repository
from inference_engine.runtime import UNLOAD_TIMEOUT_S, ModelRuntime
from inference_engine.service import InferenceService
from inference_engine.settings import BatchingSettings
from tests.helpers import encode
from tests.repository import add_colour_model

BLUE = encode(np.full((32, 32, 3), (10, 10, 250), np.uint8), "PNG")
HANG_S = 30.0  # far beyond the drain and the unload bound: the thread is abandoned, not awaited
DRAIN_S = 0.5


async def test_stop_returns_within_its_bound_while_a_forward_pass_hangs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    add_colour_model(tmp_path, "hangs", hang_on_blue_s=HANG_S, settings={"max_batch_size": 1})
    specs, broken = scan_repository(tmp_path, BatchingSettings())
    service = InferenceService(specs, broken, Metrics(), limits=ImageLimits(), preprocess_workers=1)
    service.start()
    await service.wait_loaded()
    worker = service.runtime("hangs").workers[0]
    hung = asyncio.create_task(service.infer("hangs", BLUE, top_k=None, deadline=time.monotonic() + 60))
    in_pass_by = time.monotonic() + 5
    while worker.busy_for == 0:  # wait until the blue image is in the forward pass
        assert time.monotonic() < in_pass_by, "the forward pass never started"
        await asyncio.sleep(0.01)

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="inference_engine.runtime"):
        await asyncio.wait_for(service.stop(DRAIN_S), DRAIN_S + UNLOAD_TIMEOUT_S + 2.5)
    elapsed = time.monotonic() - started

    assert elapsed < DRAIN_S + UNLOAD_TIMEOUT_S + 0.5
    with pytest.raises(ShuttingDown):  # an answer, not a wait for its 60 s deadline
        await asyncio.wait_for(hung, 0.1)
    abandoned = [r for r in caplog.records if "abandon" in r.getMessage()]
    assert [getattr(r, "model", None) for r in abandoned] == ["hangs"]
    assert worker.busy_for > 0  # still in the pass: nobody waited for it


class _Unloads:
    """Just enough of a handler for release(): its unload, which may fail."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.unloaded = False

    def unload(self) -> None:
        if self.error is not None:
            raise self.error
        self.unloaded = True


async def test_release_unloads_instances_that_are_free_and_abandons_only_a_busy_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = ModelRuntime("m", None)
    free, busy, failing = ModelWorker("m-0"), ModelWorker("m-1"), ModelWorker("m-2")
    handlers = [_Unloads(), _Unloads(), _Unloads(TimeoutError("the driver timed out"))]
    release = threading.Event()
    stuck = asyncio.ensure_future(busy.call(release.wait, 5))
    await asyncio.sleep(0.02)
    runtime.workers = [free, busy, failing]
    runtime.handlers = list(handlers)  # type: ignore[arg-type]
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="inference_engine.runtime"):
        await runtime.release(timeout_s=0.2)
    assert time.monotonic() - started < 1.0  # the three unload at once, each bounded
    release.set()
    assert handlers[0].unloaded and not handlers[1].unloaded
    assert busy.abandoned and not free.abandoned and not failing.abandoned
    with pytest.raises(ModelNotReady):
        await stuck
    assert sorted(r.getMessage() for r in caplog.records) == [
        "model thread still busy at unload; abandoned it without unloading",
        "unload failed",  # its own TimeoutError is a failed unload, not a busy thread
    ]
    assert runtime.workers == [] and runtime.handlers == []
