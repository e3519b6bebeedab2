"""InferenceService without HTTP: loading, readiness, the request path and shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from inference_engine.errors import (
    DeadlineUnmeetable,
    ModelNotFound,
    ModelNotReady,
    ShuttingDown,
    UnsupportedMediaType,
)
from inference_engine.imaging import ImageLimits
from inference_engine.metrics import Metrics
from inference_engine.models.loader import scan_repository
from inference_engine.service import InferenceService, ModelState
from inference_engine.settings import BatchingSettings
from tests.helpers import encode
from tests.repository import add_colour_model, add_faulty_model, add_model

GREEN = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")

LOAD_FAILS = """
from inference_engine.models import ModelHandler

class Explodes(ModelHandler):
    def load(self, device): raise RuntimeError("weights are corrupt")
    def preprocess(self, image): return image
    def predict(self, items): return list(items)
    def postprocess(self, output, *, top_k): return {}
"""


def build(repo: Path, metrics: Metrics | None = None) -> InferenceService:
    specs, broken = scan_repository(repo, BatchingSettings())
    return InferenceService(specs, broken, metrics or Metrics(), limits=ImageLimits(), preprocess_workers=2)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[InferenceService]:
    add_colour_model(tmp_path, "colour")
    add_colour_model(tmp_path, "slow", delay_s=0.3, settings={"max_batch_size": 1})
    folder = add_model(tmp_path, "explodes", {"handler": "model.py"})
    (folder / "model.py").write_text(LOAD_FAILS)
    add_model(tmp_path, "invalid", {"handler": "nope"})
    svc = build(tmp_path)
    svc.start()
    await svc.wait_loaded()
    yield svc
    await svc.stop(1.0)


async def test_loading_reports_each_model(service: InferenceService) -> None:
    readiness = service.readiness().models
    assert readiness["colour"] is None
    assert readiness["explodes"] is not None and "weights are corrupt" in readiness["explodes"]
    assert readiness["invalid"] is not None and "nope" in readiness["invalid"]
    colour = service.runtime("colour")
    assert colour.state is ModelState.READY
    assert colour.load_seconds is not None and colour.warmup_seconds is not None
    assert service.runtime("explodes").workers == []  # threads of a failed model are released


async def test_infer_returns_the_answer_and_its_costs(service: InferenceService) -> None:
    prediction = await service.infer("colour", GREEN, top_k=2, deadline=time.monotonic() + 5)
    assert prediction.body["predictions"][0]["label"] == "green"
    assert len(prediction.body["predictions"]) == 2
    assert prediction.batch_size == 1
    assert prediction.preprocess_s > 0 and prediction.inference_s > 0


async def test_infer_errors(service: InferenceService) -> None:
    with pytest.raises(ModelNotFound, match="colour"):
        await service.infer("nope", GREEN, top_k=None, deadline=time.monotonic() + 5)
    with pytest.raises(ModelNotReady, match="failed to load"):
        await service.infer("explodes", GREEN, top_k=None, deadline=time.monotonic() + 5)
    with pytest.raises(UnsupportedMediaType):
        await service.infer("colour", b"%PDF-1.7", top_k=None, deadline=time.monotonic() + 5)
    # Predictive admission: a 300 ms forward pass cannot meet a 100 ms deadline; refused at once.
    with pytest.raises(DeadlineUnmeetable, match="after this request's deadline"):
        await service.infer("slow", GREEN, top_k=None, deadline=time.monotonic() + 0.1)


async def test_stop_finishes_queued_work_and_refuses_new_work(service: InferenceService) -> None:
    pending = [
        asyncio.create_task(service.infer("slow", GREEN, top_k=None, deadline=time.monotonic() + 10))
        for _ in range(3)
    ]
    await asyncio.sleep(0.1)
    await service.stop(5.0)
    results = await asyncio.gather(*pending)
    assert all(r.body["predictions"][0]["label"] == "green" for r in results)
    assert service.runtime("slow").state is ModelState.STOPPED
    with pytest.raises(ShuttingDown):
        await service.infer("colour", GREEN, top_k=None, deadline=time.monotonic() + 5)


async def test_readiness_while_loading(tmp_path: Path) -> None:
    add_colour_model(tmp_path, "colour")
    svc = build(tmp_path)
    assert svc.readiness().models == {"colour": "it is pending"}
    svc.start()
    await svc.wait_loaded()
    assert svc.readiness().models == {"colour": None}
    assert svc.default_model == "colour"
    await svc.stop(1.0)


async def test_labels_that_do_not_fit_the_network_fail_the_load(tmp_path: Path) -> None:
    mode = tmp_path / "mode"
    mode.write_text("wrong_shape")  # 5 class probabilities for its 3 labels
    add_faulty_model(tmp_path, "misfit", mode)
    svc = build(tmp_path)
    svc.start()
    await svc.wait_loaded()
    reason = svc.readiness().models["misfit"]
    assert reason is not None and "answers 5 class probabilities but has 3 labels" in reason
    await svc.stop(1.0)


async def test_a_loaded_model_s_heap_is_frozen_until_it_is_released(tmp_path: Path) -> None:
    import gc

    add_colour_model(tmp_path, "colour")
    svc = build(tmp_path)
    gc.unfreeze()
    svc.start()
    await svc.wait_loaded()
    # Full collections skip what loading left behind (they paused the loop for up to 140 ms).
    assert gc.get_freeze_count() > 0
    await svc.stop(1.0)
    assert gc.get_freeze_count() == 0  # an unloaded model's objects can be collected again
