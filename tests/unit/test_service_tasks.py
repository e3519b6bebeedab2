"""Zero-shot labels, image and text embeddings, and the label cache, through InferenceService."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from inference_engine.errors import InvalidInput, UnsupportedTask
from inference_engine.imaging import ImageLimits
from inference_engine.metrics import Metrics
from inference_engine.models.loader import scan_repository
from inference_engine.service import InferenceService, TextLimits
from inference_engine.settings import BatchingSettings
from tests.helpers import encode, metric_value
from tests.repository import add_colour_model, add_colour_text_model

RED = encode(np.full((32, 32, 3), (250, 10, 10), np.uint8), "PNG")
BLUE = encode(np.full((32, 32, 3), (10, 10, 250), np.uint8), "PNG")


Served = tuple[InferenceService, Metrics]


def deadline(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Served]:
    add_colour_text_model(tmp_path, "colours", max_batch_delay_ms=20, options={"text_delay_s": 0.02})
    add_colour_text_model(tmp_path, "no_defaults", labels=None)
    add_colour_model(tmp_path, "classifier")
    specs, broken = scan_repository(tmp_path, BatchingSettings())
    metrics = Metrics()
    svc = InferenceService(
        specs, broken, metrics, limits=ImageLimits(), text_limits=TextLimits(max_items=4, max_labels=3,
        max_chars=40), preprocess_workers=2,
    )  # fmt: skip
    svc.start()
    await svc.wait_loaded()
    assert all(reason is None for reason in svc.readiness().models.values()), svc.readiness()
    yield svc, metrics
    await svc.stop(1.0)


async def test_default_labels_answer_without_request_labels(
    service: Served,
) -> None:
    svc, _ = service
    prediction = await svc.infer("colours", RED, top_k=None, deadline=deadline())
    scores = prediction.body["predictions"]
    assert scores[0]["label"] == "red"
    assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-5)


async def test_request_labels_are_ranked_and_follow_the_request(
    service: Served,
) -> None:
    svc, _ = service
    first = await svc.infer("colours", BLUE, top_k=None, deadline=deadline(), labels=["white", "blue"])
    assert [p["label"] for p in first.body["predictions"]] == ["blue", "white"]
    swapped = await svc.infer("colours", RED, top_k=1, deadline=deadline(), labels=["blue", "red", "green"])
    assert [p["label"] for p in swapped.body["predictions"]] == ["red"]
    assert swapped.body["predictions"][0]["index"] == 1  # index into the request's own list


async def test_label_embeddings_are_cached_and_shared(service: Served) -> None:
    svc, metrics = service
    handler = svc.runtime("colours").handlers[0]
    batches_before = len(handler.text_batches)  # type: ignore[attr-defined]
    labels = ["a red thing", "a green thing"]
    results = await asyncio.gather(
        *(svc.infer("colours", RED, top_k=None, deadline=deadline(), labels=labels) for _ in range(5))
    )
    assert all(r.body["predictions"][0]["label"] == "a red thing" for r in results)
    computed = sum(handler.text_batches[batches_before:])  # type: ignore[attr-defined]
    assert computed == 2  # five concurrent requests, each label embedded once
    hits = metric_value(metrics.render().decode(), "inference_engine_label_cache_lookups_total",
                        model="colours", result="hit")  # fmt: skip
    misses = metric_value(metrics.render().decode(), "inference_engine_label_cache_lookups_total",
                          model="colours", result="miss")  # fmt: skip
    assert misses == 10 and hits == 0  # all five missed at once and waited on one computation
    await svc.infer("colours", RED, top_k=None, deadline=deadline(), labels=labels)
    assert metric_value(metrics.render().decode(), "inference_engine_label_cache_lookups_total",
                        model="colours", result="hit") == 2  # fmt: skip
    assert len(svc.runtime("colours").label_cache or []) == 2


async def test_image_and_text_embeddings(service: Served) -> None:
    svc, _ = service
    images = await svc.embed("colours", images=[RED, BLUE], deadline=deadline())
    assert images.modality == "image" and images.dimension == 3
    assert [int(np.argmax(v)) for v in images.vectors] == [0, 2]
    assert all(np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5) for v in images.vectors)
    texts = await svc.embed("colours", texts=["green", "blue", "red", "white"], deadline=deadline())
    assert texts.modality == "text"
    assert [int(np.argmax(v)) for v in texts.vectors[:3]] == [1, 2, 0]
    assert max(texts.batch_sizes) > 1  # the texts of one request batch together


async def test_images_and_texts_batch_separately(service: Served) -> None:
    svc, metrics = service
    await asyncio.gather(
        svc.embed("colours", images=[RED, BLUE, RED], deadline=deadline()),
        svc.embed("colours", texts=["red", "blue", "green"], deadline=deadline()),
    )
    text = metrics.render().decode()
    assert metric_value(text, "inference_engine_batch_size_count", model="colours:text") >= 1
    assert metric_value(text, "inference_engine_batch_size_count", model="colours") >= 1


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        ({"labels": []}, InvalidInput, "at least one label"),
        ({"labels": ["a", "b", "c", "d"]}, InvalidInput, "limit is 3"),
        ({"labels": ["red", "red"]}, InvalidInput, "must not repeat"),
        ({"labels": ["  "]}, InvalidInput, "non-empty string"),
        ({"labels": ["x" * 41]}, InvalidInput, "longer than the limit of 40"),
    ],
)
async def test_bad_labels_are_refused(
    service: Served,
    call: dict[str, list[str]],
    error: type[Exception],
    message: str,
) -> None:
    svc, _ = service
    with pytest.raises(error, match=message):
        await svc.infer("colours", RED, top_k=None, deadline=deadline(), **call)


async def test_what_a_model_cannot_do_is_a_400(service: Served) -> None:
    svc, _ = service
    with pytest.raises(UnsupportedTask, match="classification without labels"):
        await svc.infer("no_defaults", RED, top_k=None, deadline=deadline())
    with pytest.raises(UnsupportedTask, match="zero-shot labels"):
        await svc.infer("classifier", RED, top_k=None, deadline=deadline(), labels=["red"])
    with pytest.raises(UnsupportedTask, match="image embeddings"):
        await svc.embed("classifier", images=[RED], deadline=deadline())
    with pytest.raises(UnsupportedTask, match="text embeddings"):
        await svc.embed("classifier", texts=["red"], deadline=deadline())
    assert "text" not in svc.runtime("classifier").batchers


async def test_embed_input_bounds(service: Served) -> None:
    svc, _ = service
    with pytest.raises(InvalidInput, match="one kind per request"):
        await svc.embed("colours", deadline=deadline())  # nothing
    with pytest.raises(InvalidInput, match="one kind per request"):
        await svc.embed("colours", images=[RED], texts=["red"], deadline=deadline())
    with pytest.raises(InvalidInput, match="limit is 4"):
        await svc.embed("colours", texts=["red"] * 5, deadline=deadline())
    with pytest.raises(InvalidInput, match="non-empty"):
        await svc.embed("colours", texts=[""], deadline=deadline())


async def test_a_restart_keeps_the_label_cache(service: Served) -> None:
    svc, _ = service
    await svc.infer("colours", RED, top_k=None, deadline=deadline(), labels=["red", "blue"])
    runtime = svc.runtime("colours")
    cache = runtime.label_cache
    await svc.restart(runtime, "test", "hung")
    assert runtime.ready and runtime.label_cache is cache and len(cache or []) == 2
    assert set(runtime.batchers) == {"image", "text"}
