"""The service announces each image it decodes, so a lone request skips the batch delay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from inference_engine.imaging import ImageLimits
from inference_engine.metrics import Metrics
from inference_engine.models.loader import scan_repository
from inference_engine.service import InferenceService
from inference_engine.settings import BatchingSettings
from tests.helpers import encode
from tests.repository import add_colour_model

GREEN = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")
DELAY_MS = 1500.0


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[InferenceService]:
    add_colour_model(tmp_path, "colour", settings={"max_batch_size": 8, "max_batch_delay_ms": DELAY_MS})
    specs, broken = scan_repository(tmp_path, BatchingSettings())
    svc = InferenceService(specs, broken, Metrics(), limits=ImageLimits(), preprocess_workers=2)
    svc.start()
    await svc.wait_loaded()
    yield svc
    await svc.stop(1.0)


async def test_a_lone_request_does_not_wait_for_the_batch_delay(service: InferenceService) -> None:
    started = time.monotonic()
    prediction = await service.infer("colour", GREEN, top_k=1, deadline=time.monotonic() + 10)
    assert prediction.body["predictions"][0]["label"] == "green"
    assert time.monotonic() - started < DELAY_MS / 1000 / 2
    assert prediction.queue_s < DELAY_MS / 1000 / 2


async def test_concurrent_requests_still_share_a_batch(service: InferenceService) -> None:
    predictions = await asyncio.gather(
        *(service.infer("colour", GREEN, top_k=1, deadline=time.monotonic() + 10) for _ in range(4))
    )
    # The first may run alone (nothing else was decoded yet when it arrived); the rest batch.
    assert max(p.batch_size for p in predictions) >= 2
    assert sum(1 for p in predictions if p.batch_size == 1) <= 1
