"""The registry answers every query that touches no queue, before and after models load."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_engine.answers import Route
from inference_engine.errors import ModelLoadError, ModelNotFound, ModelNotReady
from inference_engine.metrics import Metrics
from inference_engine.models.loader import BrokenModel, scan_repository
from inference_engine.registry import ModelRegistry
from inference_engine.runtime import ModelState
from inference_engine.settings import BatchingSettings
from tests.repository import add_colour_model


def registry(tmp_path: Path, **kwargs: object) -> ModelRegistry:
    add_colour_model(tmp_path, "colour")
    specs, broken = scan_repository(tmp_path, BatchingSettings())
    broken.append(BrokenModel("broken", tmp_path / "broken", "model.yaml: nope"))
    return ModelRegistry(specs, broken, Metrics(), **kwargs)  # type: ignore[arg-type]


def test_lookups_name_the_model_or_404(tmp_path: Path) -> None:
    models = registry(tmp_path)
    assert models.default_model == "broken"  # the first by name when none is configured
    models.runtime("colour", "1").state = ModelState.READY  # as if loaded (no batchers: not ready)
    with pytest.raises(ModelNotReady, match="its batch loop is not running"):
        models.route("colour")  # the traffic weights route only to ready versions
    assert models.route("colour", "1") == Route("colour", "1")
    with pytest.raises(ModelNotFound, match="no version '2' served"):
        models.route("colour", "2")
    with pytest.raises(ModelNotFound, match=r"no model named 'x+\.\.\.' \(served: broken, colour\)"):
        models.route("x" * 100)
    with pytest.raises(ModelLoadError, match="is not a served model"):
        registry(tmp_path / "again", default_model="nope")


def test_state_before_anything_loads(tmp_path: Path) -> None:
    models = registry(tmp_path)
    readiness = models.readiness()
    assert not readiness.ready and readiness.models["colour"] == "it is pending"
    assert readiness.not_ready["broken"].startswith("it failed to load: model.yaml: nope")
    assert not models.model_ready("colour")
    meta = models.model_metadata("colour")
    assert not meta.loaded and [t.name for t in meta.inputs] == ["image"] and meta.outputs == ()
    with pytest.raises(ModelNotReady):
        models.model_metadata("broken")  # no configuration to describe
    statuses = {s.name: s for s in models.models_status()}
    assert statuses["broken"].batching is None and statuses["colour"].batching is not None
    assert [v.version for v in statuses["colour"].versions] == ["1"]
    assert [s["name"] for s in models.statistics()] == ["colour"]  # a broken folder has no version
    with pytest.raises(ModelNotReady, match="is not ready: it is pending"):
        models.admit(Route("colour", "1"))
    with pytest.raises(ModelNotReady, match="is not ready: it is pending"):
        models.route("colour")  # no ready version to route to
    assert models.liveness() is None


def test_liveness_fails_only_past_the_recovery_limit(tmp_path: Path) -> None:
    models = registry(tmp_path, recovery_limit=2)
    runtime = models.runtime("colour")
    runtime.failed_recoveries, runtime.error = 1, "out of memory"
    assert models.liveness() is None
    runtime.failed_recoveries = 2
    assert models.liveness() == "model colour version 1 failed 2 reloads in a row (limit 2): out of memory"
    unlimited = registry(tmp_path / "unlimited", recovery_limit=0)
    unlimited.runtime("colour").failed_recoveries = 99
    assert unlimited.liveness() is None
