"""Model control in-process: load, reload, unload and index, without a restart, and shadows."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from inference_engine.answers import Route
from inference_engine.control import ModelRepository
from inference_engine.errors import LoadFailed, ModelNotFound, ModelNotReady
from inference_engine.imaging import ImageLimits
from inference_engine.metrics import Metrics
from inference_engine.models.loader import scan_repository
from inference_engine.pipeline import Prepared
from inference_engine.service import InferenceService
from inference_engine.settings import BatchingSettings
from tests.helpers import FIXTURE_MODELS, encode

GREEN = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")
BLUE = encode(np.full((32, 32, 3), (10, 10, 250), np.uint8), "PNG")


def write_model(repo: Path, versions: dict[int, dict[str, object]], **shared: object) -> Path:
    folder = repo / "m"
    folder.mkdir(exist_ok=True)
    if not (folder / "model.py").exists():  # rewritten, it would reload every version (new code)
        shutil.copy(FIXTURE_MODELS / "colour" / "model.py", folder / "model.py")
    (folder / "model.yaml").write_text(yaml.safe_dump({"handler": "model.py", "labels": None, **shared}))
    for number, own in versions.items():
        (folder / str(number)).mkdir(exist_ok=True)
        (folder / str(number) / "model.yaml").write_text(yaml.safe_dump(own))
    return folder


async def started(repo: Path, metrics: Metrics, **kwargs: object) -> InferenceService:
    specs, broken = scan_repository(repo, BatchingSettings())
    service = InferenceService(
        specs, broken, metrics, limits=ImageLimits(), preprocess_workers=2,
        repository=ModelRepository(repo, BatchingSettings(), drain_timeout_s=5.0), **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip
    service.start()
    await service.wait_loaded()
    return service


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def service(tmp_path: Path, metrics: Metrics) -> AsyncIterator[InferenceService]:
    write_model(tmp_path, {1: {}})
    svc = await started(tmp_path, metrics)
    yield svc
    await svc.stop(1.0)


async def copies_done(service: InferenceService, timeout_s: float = 10.0) -> None:
    """Wait until no shadow copy is running (they run after the answer, in the background)."""
    await service.shadows.settle(timeout_s)


async def answer(service: InferenceService, target: Route | str = "m", image: bytes = GREEN) -> str:
    prediction = await service.infer(target, image, top_k=1, deadline=time.monotonic() + 10)
    return prediction.model_version


async def test_load_adds_a_version_warm_before_traffic_moves(
    service: InferenceService, tmp_path: Path
) -> None:
    assert await answer(service) == "1"
    first = service.runtime("m", "1")
    write_model(
        tmp_path, {2: {"options": {"load_delay_s": 0.3}}}, version_policy="all", traffic={"1": 1, "2": 1}
    )
    loading = asyncio.create_task(service.control.load("m"))
    await asyncio.sleep(0.1)
    assert [(e.version, e.state) for e in service.control.index()] == [("1", "READY"), ("2", "LOADING")]
    assert {await answer(service) for _ in range(10)} == {"1"}  # version 2 takes nothing yet
    await loading
    assert service.runtime("m", "1") is first  # unchanged on disk: kept, not reloaded
    seen = {await answer(service) for _ in range(40)}
    assert seen == {"1", "2"}
    assert await answer(service, Route("m", "2")) == "2"
    assert [(e.version, e.state) for e in service.control.index(ready_only=True)] == [
        ("1", "READY"),
        ("2", "READY"),
    ]


async def test_a_retired_version_finishes_what_it_accepted(service: InferenceService, tmp_path: Path) -> None:
    write_model(tmp_path, {1: {"options": {"delay_s": 0.4}}})
    await service.control.load("m")  # version 1 changed on disk: a new instance replaces it
    slow = service.runtime("m", "1")
    in_flight = asyncio.create_task(answer(service))
    await asyncio.sleep(0.05)
    shutil.rmtree(tmp_path / "m" / "1")
    write_model(tmp_path, {2: {}})
    await service.control.load("m")
    assert slow.active == 0 and not slow.handlers  # released only after its request answered
    assert await in_flight == "1"
    assert await answer(service) == "2" and list(service.served("m").versions) == ["2"]
    with pytest.raises(ModelNotFound):
        await answer(service, Route("m", "1"))


async def test_a_failed_load_leaves_what_served(
    service: InferenceService, tmp_path: Path, metrics: Metrics
) -> None:
    (tmp_path / "m" / "model.yaml").write_text("handler: model.py\nlabels: null\nbogus: 1\n")
    with pytest.raises(LoadFailed, match="bogus"):
        await service.control.load("m")
    assert await answer(service) == "1"
    assert any(
        e.reason.startswith("last load failed:") and "bogus" in e.reason for e in service.control.index()
    )
    write_model(
        tmp_path, {1: {}, 2: {"weights": "missing.pt", "handler": "torchscript"}}, version_policy="all"
    )
    with pytest.raises(LoadFailed, match=r"version 2: .*missing\.pt"):
        await service.control.load("m")
    assert list(service.served("m").versions) == ["1"] and await answer(service) == "1"
    assert metrics.repository_operations.labels("m", "load", "failed")._value.get() == 2
    write_model(tmp_path, {1: {}})
    shutil.rmtree(tmp_path / "m" / "2")
    await service.control.load("m")
    assert service.served("m").last_failure is None


async def test_unload_then_load_again(service: InferenceService) -> None:
    await service.control.unload("m")
    with pytest.raises(ModelNotReady, match="unloaded"):
        await answer(service)
    assert not service.model_ready("m") and service.readiness().models == {}
    assert [(e.name, e.version, e.state, e.reason) for e in service.control.index()] == [
        ("m", None, "UNAVAILABLE", "unloaded")
    ]
    await service.control.load("m")
    assert service.model_ready("m") and await answer(service) == "1"


async def test_load_brings_in_a_model_not_served_at_start(service: InferenceService, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "m", other)
    shutil.rmtree(other / "1")
    assert ("other", None, "UNAVAILABLE", "not loaded") in [
        (e.name, e.version, e.state, e.reason) for e in service.control.index()
    ]
    await service.control.load("other")
    assert await answer(service, "other") == "1"
    with pytest.raises(ModelNotFound, match="no model folder"):
        await service.control.load("../etc")


async def test_a_shadow_is_compared_and_its_failures_stay_hidden(tmp_path: Path, metrics: Metrics) -> None:
    write_model(tmp_path, {1: {}, 2: {}}, version_policy="all", traffic={"1": 1}, shadow={"2": 100})
    service = await started(tmp_path, metrics)
    try:
        assert {await answer(service) for _ in range(5)} == {"1"}
        await copies_done(service)
        pair = ("m", "1", "2")
        assert metrics.shadow_requests.labels(*pair, "compared")._value.get() == 5
        assert metrics.shadow_agreement_ratio.labels(*pair)._value.get() == 1.0
        await answer(service, Route("m", "1"))  # a pinned request is not copied
        await copies_done(service)
        assert metrics.shadow_requests.labels(*pair, "compared")._value.get() == 5
        # Version 2 now fails every batch with a blue image (it passes its grey canary).
        write_model(tmp_path, {2: {"options": {"fail_batch_on_blue": True}}}, version_policy="all",
                    traffic={"1": 1}, shadow={"2": 100})  # fmt: skip
        await service.control.load("m")
        assert {await answer(service, image=BLUE) for _ in range(3)} == {"1"}
        await copies_done(service)
        assert metrics.shadow_requests.labels(*pair, "failed")._value.get() == 3
        service.shadows.max_in_flight = 0
        await answer(service)
        assert metrics.shadow_requests.labels(*pair, "shed")._value.get() == 1
    finally:
        await service.stop(1.0)


async def test_poll_mode_loads_what_changed_on_disk(tmp_path: Path, metrics: Metrics) -> None:
    write_model(tmp_path, {1: {}})
    service = await started(tmp_path, metrics)
    try:
        service.control.start_polling(0.05)
        await asyncio.sleep(0.15)
        write_model(tmp_path, {2: {}})
        for _ in range(100):
            if "2" in service.served("m").versions and service.served("m").ready:
                break
            await asyncio.sleep(0.05)
        assert list(service.served("m").versions) == ["2"] and await answer(service) == "2"
    finally:
        await service.stop(1.0)


async def test_gauges_follow_the_served_set(
    service: InferenceService, tmp_path: Path, metrics: Metrics
) -> None:
    write_model(tmp_path, {1: {}, 2: {}}, version_policy="all", traffic={"1": 1, "2": 3}, shadow={"1": 100})
    await service.control.load("m")
    assert metrics.traffic_weight.labels("m", "2")._value.get() == 0.75
    await answer(service, Route("m", "2", routed=True))
    await copies_done(service)
    assert metrics.shadow_agreement_ratio.labels("m", "2", "1")._value.get() == 1.0
    # Roll back: version 2 stays served without traffic; the shadow goes, and its ratio with it.
    write_model(tmp_path, {1: {}, 2: {}}, version_policy="all", traffic={"1": 1})
    await service.control.load("m")
    assert metrics.traffic_weight.labels("m", "2")._value.get() == 0.0
    assert metrics.traffic_weight.labels("m", "1")._value.get() == 1.0
    assert "inference_engine_shadow_agreement_ratio{" not in metrics.render().decode()
    # Version 1 reloaded from new files: its new instance reports ready once the old is gone.
    (tmp_path / "m" / "1" / "labels.txt").write_text("new files\n")
    await service.control.load("m")
    service.refresh_gauges()
    assert metrics.model_ready.labels("m", "1")._value.get() == 1.0


async def test_a_shadow_of_the_same_network_skips_decoding(tmp_path: Path, metrics: Metrics) -> None:
    """Two versions of a built-in handler with the same pre-processing: the shadow copy queues
    the primary's prepared input instead of decoding the image again."""
    from tests.repository import add_tiny_cnn

    folder = add_tiny_cnn(tmp_path, "m", version_policy="all", traffic={"1": 1}, shadow={"2": 100},
                          weights="../tiny.pt", labels="../labels.txt")  # fmt: skip
    for number in (1, 2):
        (folder / str(number)).mkdir()
    service = await started(tmp_path, metrics)
    try:
        for _ in range(4):
            await answer(service)
        await copies_done(service)
        assert metrics.shadow_requests.labels("m", "1", "2", "compared")._value.get() == 4
        assert metrics.shadow_agreement_ratio.labels("m", "1", "2")._value.get() == 1.0
        decoded = metrics.preprocess_duration.labels("m", "2")._sum.get()
        assert decoded == 0.0  # version 2 decoded nothing
        first, second = (service.runtime("m", v).handlers[0] for v in ("1", "2"))
        assert Prepared(first, []).fits(second)
        other = second.config.preprocessing.model_copy(update={"resize": 70})
        second.config = second.config.model_copy(update={"preprocessing": other})
        assert not Prepared(first, []).fits(second)
    finally:
        await service.stop(1.0)


async def test_no_copy_while_the_primary_callers_queue(tmp_path: Path, metrics: Metrics) -> None:
    write_model(tmp_path, {1: {"options": {"delay_s": 0.2}, "max_batch_size": 1}, 2: {}},
                version_policy="all", traffic={"1": 1}, shadow={"2": 100})  # fmt: skip
    service = await started(tmp_path, metrics)
    try:
        # Four callers at once on a one-at-a-time model: those answered while others still wait
        # get no copy; the last ones, with nobody behind them, do.
        versions = await asyncio.gather(*(answer(service) for _ in range(4)))
        await copies_done(service)
        assert versions == ["1"] * 4
        pair = ("m", "1", "2")
        shed = metrics.shadow_requests.labels(*pair, "shed")._value.get()
        compared = metrics.shadow_requests.labels(*pair, "compared")._value.get()
        assert shed >= 1 and compared >= 1 and shed + compared == 4
    finally:
        await service.stop(1.0)
