"""Shared label-embedding work: each waiter keeps its own deadline, the work outlives any one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from inference_engine.errors import DeadlineExceeded
from inference_engine.imaging import ImageLimits
from inference_engine.logging import RequestContext, current_request
from inference_engine.metrics import Metrics
from inference_engine.models.loader import scan_repository
from inference_engine.service import InferenceService
from inference_engine.settings import BatchingSettings
from tests.helpers import encode
from tests.repository import add_colour_text_model

RED = encode(np.full((32, 32, 3), (250, 10, 10), np.uint8), "PNG")
TEXT_DELAY_S = 0.4


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[InferenceService]:
    add_colour_text_model(tmp_path, "colours", options={"text_delay_s": TEXT_DELAY_S})
    specs, broken = scan_repository(tmp_path, BatchingSettings())
    svc = InferenceService(specs, broken, Metrics(), limits=ImageLimits(), preprocess_workers=2)
    svc.start()
    await svc.wait_loaded()
    yield svc
    await svc.stop(1.0)


async def test_a_short_deadline_does_not_fail_a_long_one_waiting_on_the_same_label(
    service: InferenceService,
) -> None:
    labels = ["a red thing", "a blue thing"]
    now = time.monotonic()
    short = asyncio.ensure_future(
        service.infer("colours", RED, top_k=None, deadline=now + 0.15, labels=labels)
    )
    await asyncio.sleep(0.01)  # the short request starts the shared computation
    long = asyncio.ensure_future(service.infer("colours", RED, top_k=None, deadline=now + 10, labels=labels))
    with pytest.raises(DeadlineExceeded):
        await short
    prediction = await long
    assert prediction.body["predictions"][0]["label"] == "a red thing"


async def test_the_shared_work_outlives_its_first_waiter(service: InferenceService) -> None:
    labels = ["green"]
    first = asyncio.ensure_future(
        service.infer("colours", RED, top_k=None, deadline=time.monotonic() + 10, labels=labels)
    )
    await asyncio.sleep(0.05)
    first.cancel()  # the first requester gives up (say its client disconnected)
    await asyncio.gather(first, return_exceptions=True)
    started = time.monotonic()
    second = await service.infer("colours", RED, top_k=None, deadline=time.monotonic() + 10, labels=labels)
    assert second.body["predictions"][0]["label"] == "green"
    assert time.monotonic() - started < TEXT_DELAY_S * 2  # it joined the running computation


async def test_shared_work_logs_under_no_requester_id(
    service: InferenceService, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    runtime = service.runtime("colours")
    handler = runtime.handlers[0]
    original = handler.preprocess_text  # type: ignore[attr-defined]

    def spy(prompts: list[str]) -> object:
        ctx = current_request.get()
        seen.append(ctx.request_id if ctx else "-")
        return original(prompts)

    handler.preprocess_text = spy  # type: ignore[attr-defined]
    token = current_request.set(RequestContext("first-requester"))
    try:
        await service.infer("colours", RED, top_k=None, deadline=time.monotonic() + 10, labels=["white"])
    finally:
        current_request.reset(token)
    assert seen and "first-requester" not in seen
