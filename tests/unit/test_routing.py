"""Which version answers: named, weighted by traffic, sticky by routing key, ready ones only."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from inference_engine.answers import Route
from inference_engine.errors import ModelNotFound, ModelNotReady
from inference_engine.models.versions import ServingPlan
from inference_engine.routing import ServedModel, key_point, pick
from inference_engine.runtime import ModelRuntime, ModelState


class Ready(ModelRuntime):
    """A runtime that reports ready without loading anything."""

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY


def model(traffic: dict[str, float], shadow: dict[str, float] | None = None, **states: Any) -> ServedModel:
    versions = tuple(sorted({*traffic, *(shadow or {}), *states}, key=int))
    runtimes = [Ready("m", None, states.get(v, ModelState.READY), version=v) for v in versions]
    total = sum(traffic.values())
    plan = ServingPlan("all", versions, {v: w / total for v, w in traffic.items() if w}, shadow or {})
    return ServedModel("m", None, plan, runtimes)


def test_the_weights_split_the_traffic() -> None:
    served = model({"1": 70, "2": 30})
    counts = Counter(served.route(None, None).version for _ in range(20_000))
    assert abs(counts["1"] / 20_000 - 0.7) < 0.02
    assert all(served.route(None, None).routed for _ in range(3))


def test_a_routing_key_always_lands_on_one_version_and_keys_spread_by_weight() -> None:
    served = model({"1": 50, "2": 50})
    for key in ("alice", "bob", "user-42", "ü"):
        assert len({served.route(None, key).version for _ in range(50)}) == 1
    spread = Counter(served.route(None, f"user-{i}").version for i in range(4000))
    assert abs(spread["1"] / 4000 - 0.5) < 0.05
    assert 0.0 <= key_point("x") < 1.0 and key_point("x") == key_point("x")


def test_pick_covers_the_unit_interval_in_order() -> None:
    weights = [("1", 0.25), ("2", 0.75)]
    assert [pick(weights, p) for p in (0.0, 0.2499, 0.25, 0.999)] == ["1", "1", "2", "2"]


def test_versions_not_ready_get_no_traffic() -> None:
    served = model({"1": 50, "2": 50}, **{"2": ModelState.LOADING})
    assert {served.route(None, None).version for _ in range(200)} == {"1"}
    assert not served.ready and served.not_ready_reason() == "version 2: it is loading"
    down = model({"1": 100}, **{"1": ModelState.FAILED})
    with pytest.raises(ModelNotReady):
        down.route(None, None)


def test_a_named_version_is_honoured_or_404() -> None:
    served = model({"1": 100, "2": 0})
    assert served.route("2", None) == Route("m", "2")  # pinned: no weight needed
    with pytest.raises(ModelNotFound, match="no version '3' served"):
        served.route("3", None)


def test_a_retired_version_is_rerouted_unless_it_was_named() -> None:
    served = model({"1": 50, "2": 50})
    del served.versions["1"]
    assert served.runtime_for(Route("m", "1", routed=True)).version == "2"
    with pytest.raises(ModelNotFound):
        served.runtime_for(Route("m", "1"))


def test_an_unloaded_model_answers_503_with_how_to_load_it() -> None:
    served = model({"1": 100})
    served.unloaded = True
    with pytest.raises(ModelNotReady, match="unloaded; load it with POST /v2/repository/models/m/load"):
        served.route(None, None)
    assert not served.ready and served.not_ready_reason() == "it is unloaded"


def test_shadows_exclude_the_version_that_answered() -> None:
    served = model({"1": 50, "2": 50}, shadow={"2": 1.0, "3": 0.5})
    assert [(r.version, s) for r, s in served.shadows_of("1")] == [("2", 1.0), ("3", 0.5)]
    assert [r.version for r, _ in served.shadows_of("2")] == ["3"]
    assert served.primary is not None and served.primary.version == "2"
