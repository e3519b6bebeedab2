"""Model versions against a real server process on loopback.

* EfficientNet-Lite0 in two versions, version 1 torch and version 2 its ONNX export (made once
  by the real ``python -m inference_engine export``): the 70/30 traffic split, sticky routing
  keys, named versions on the V1 and V2 routes, 404 for an unknown version, ``X-Model-Version``,
  the per-version request counter; model control with Triton's own client.
* Small colour models on a second server (model control on): a rollout 1 -> 2 under steady
  load with nothing lost, a shadow that costs callers nothing and whose failure they never see,
  and loads of broken folders that change nothing. A third server has model control off (403).

Run with ``-s`` to see the measured figures.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.helpers import ServerProcess, cat_jpeg, encode, metric_value
from tests.repository import add_colour_model, add_faulty_model
from tests.versions_repo import (
    IndexPoller,
    Observation,
    SteadyLoad,
    add_version,
    add_versioned_efficientnet,
    export_onnx,
    index,
    load,
    make_versioned,
    set_model_keys,
    v2_image_body,
    versions_in,
)

pytestmark = pytest.mark.integration

EN = "efficientnet_lite0"
CAT = cat_jpeg()
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}
COLOURS = {
    name: encode(np.full((32, 32, 3), rgb, np.uint8), "PNG")
    for name, rgb in {"red": (250, 10, 10), "green": (10, 250, 10), "blue": (10, 10, 250)}.items()
}
GREEN = COLOURS["green"]


def answer_version(response: httpx.Response) -> str:
    """The version that answered: the JSON ``model_version``, checked against ``X-Model-Version``."""
    assert response.status_code == 200, response.text
    version: str = response.json()["model_version"]
    assert response.headers["x-model-version"] == version
    return version


def metrics(client: httpx.Client) -> str:
    return client.get("/metrics").text


# -- servers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def en_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """EfficientNet-Lite0: version 1 torch, version 2 ONNX, traffic 70/30; model control on."""
    started = time.monotonic()
    onnx = export_onnx(tmp_path_factory.mktemp("export"), CAT)
    exported = time.monotonic()
    repo = tmp_path_factory.mktemp("en_versions")
    add_versioned_efficientnet(repo, onnx, version_policy="all", traffic={"1": 70, "2": 30})
    server = ServerProcess(repo, env={"IE_SERVER__MODEL_CONTROL": "true"})
    server.start(tmp_path_factory.mktemp("logs") / "en_server.log")
    server.wait_loaded()
    with client_for(server) as client:
        states = versions_in(index(client), EN)
    assert states == {"1": "READY", "2": "READY"}, server.log()
    print(f"\nONNX export {exported - started:.1f}s, server up {time.monotonic() - exported:.1f}s")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def modes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the faulty models read their modes (see tests/fixtures/models/faulty)."""
    return tmp_path_factory.mktemp("modes")


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory, modes: Path) -> Iterator[ServerProcess]:
    """Colour models in versioned layouts; model control on.

    * ``rollout``: only version 1 at start, ``version_policy: all``, traffic all to version 1.
    * ``shadowed``: two versions of the faulty model with the same outputs, version 2 a 100%
      shadow of 1; version 2 reads its own mode file (``shadow_mode``), so only the shadow can
      be faulted, and its forward pass takes 100 ms against 20 ms, so a caller that waited for
      the copy would show it.
    * ``plain``: the same two versions without a shadow (the latency baseline).
    * ``steady``: version 1 of the colour model, ``version_policy: all``, no traffic key.
    """
    repo = tmp_path_factory.mktemp("small_versions")
    make_versioned(add_colour_model(repo, "rollout"), (1,), version_policy="all", traffic={"1": 100})
    shadowed = add_faulty_model(repo, "shadowed", modes / "primary_mode")
    make_versioned(shadowed, (1,), version_policy="all", traffic={"1": 100}, shadow={"2": 100})
    add_version(shadowed, 2, {"options": {"mode_file": str(modes / "shadow_mode"), "delay_s": 0.1}})
    plain = add_faulty_model(repo, "plain", modes / "primary_mode")
    make_versioned(plain, (1,), version_policy="all", traffic={"1": 100})
    add_version(plain, 2, {"options": {"mode_file": str(modes / "plain_mode")}})
    make_versioned(add_colour_model(repo, "steady"), (1,), version_policy="all")
    server = ServerProcess(repo, env={"IE_SERVER__MODEL_CONTROL": "true"})
    server.start(tmp_path_factory.mktemp("logs") / "small_server.log")
    server.wait_loaded()
    yield server
    server.stop()


def client_for(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60)


# -- 1. traffic split, sticky keys, named versions: EfficientNet torch v1 + ONNX v2 ----------------


def test_traffic_weights_split_the_requests_70_30(en_server: ServerProcess) -> None:
    requests = 400
    with client_for(en_server) as client:
        before = metrics(client)

        def one(_: int) -> tuple[str, str]:
            response = client.post(f"/v1/models/{EN}/predict", content=CAT)
            return answer_version(response), response.json()["predictions"][0]["label"]

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(requests)))
        elapsed = time.monotonic() - started
        counts = Counter(version for version, _ in answers)
        share = counts["1"] / requests
        print(
            f"\n{requests} requests in {elapsed:.1f}s: by version {dict(sorted(counts.items()))}, "
            f"version 1 {share:.3f}"
        )
        assert set(counts) == {"1", "2"}
        assert 0.62 <= share <= 0.78, counts
        # Both versions are the same network (torch and its verified ONNX export): the same class.
        labels = Counter(label for _, label in answers)
        assert set(labels) <= CAT_CLASSES and len(labels) == 1, labels

        # The per-version request counter: its version labels add up to the answers counted here.
        def counted(text: str, version: str) -> float:
            return metric_value(text, "inference_engine_requests_total", model=EN, version=version)

        deadline = time.monotonic() + 10
        while True:
            after = metrics(client)
            deltas = {v: counted(after, v) - counted(before, v) for v in ("1", "2")}
            if deltas == {v: float(counts[v]) for v in ("1", "2")} or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        print(f"inference_engine_requests_total increase by version: {deltas}")
        assert deltas == {"1": counts["1"], "2": counts["2"]}
        weights = {
            v: metric_value(after, "inference_engine_traffic_weight", model=EN, version=v) for v in "12"
        }
        assert weights == pytest.approx({"1": 0.7, "2": 0.3})


def test_a_routing_key_sticks_to_one_version(en_server: ServerProcess) -> None:
    with client_for(en_server) as client:

        def versions_for(key: str, count: int) -> set[str]:
            headers = {"X-Routing-Key": key}
            return {
                answer_version(client.post(f"/v1/models/{EN}/predict", content=CAT, headers=headers))
                for _ in range(count)
            }

        sticky = versions_for("user-42", 20)
        assert len(sticky) == 1, sticky
        # Other keys stick too, and the keys as a whole reach both versions.
        by_key = {f"user-{n}": versions_for(f"user-{n}", 2) for n in range(16)}
        print(f"\nuser-42 -> {sticky}; 16 keys -> {Counter(min(v) for v in by_key.values())}")
        assert all(len(v) == 1 for v in by_key.values()), by_key
        assert set().union(*by_key.values()) == {"1", "2"}


def test_a_named_version_is_honoured_on_both_protocols(en_server: ServerProcess) -> None:
    with client_for(en_server) as client:
        for version in ("1", "2", "2", "1", "2"):
            response = client.post(f"/v1/models/{EN}/versions/{version}/predict", content=CAT)
            assert answer_version(response) == version
            assert response.json()["predictions"][0]["label"] in CAT_CLASSES
            infer = client.post(f"/v2/models/{EN}/versions/{version}/infer", content=v2_image_body(CAT))
            assert infer.status_code == 200, infer.text
            assert infer.json()["model_version"] == version
            assert infer.headers["x-model-version"] == version
        # The V2 route without a version answers with the version the traffic weights chose.
        routed = client.post(f"/v2/models/{EN}/infer", content=v2_image_body(CAT))
        assert routed.json()["model_version"] == routed.headers["x-model-version"] in ("1", "2")


def test_an_unknown_version_is_404(en_server: ServerProcess) -> None:
    with client_for(en_server) as client:
        v1 = client.post(f"/v1/models/{EN}/versions/3/predict", content=CAT)
        assert v1.status_code == 404, v1.text
        assert v1.json()["error"]["type"] == "model_not_found"
        assert "x-model-version" not in v1.headers
        v2 = client.post(f"/v2/models/{EN}/versions/3/infer", content=v2_image_body(CAT))
        assert v2.status_code == 404, v2.text
        assert "version" in v2.json()["error"]
        assert client.get(f"/v2/models/{EN}/versions/3/ready").status_code == 404


# -- 2. model control with Triton's client ---------------------------------------------------------


def test_model_control_with_tritonclient(en_server: ServerProcess) -> None:
    url = en_server.url.removeprefix("http://")
    with triton.InferenceServerClient(url=url, network_timeout=120) as client, client_for(en_server) as http:
        entries = client.get_model_repository_index()
        assert {(e["version"], e["state"]) for e in entries if e["name"] == EN} == {
            ("1", "READY"),
            ("2", "READY"),
        }
        assert client.is_model_ready(EN, "1") and client.is_model_ready(EN, "2")
        image = triton.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([CAT], dtype=np.object_))
        assert client.infer(EN, [image], model_version="2").get_response()["model_version"] == "2"

        started = time.monotonic()
        client.unload_model(EN)
        unloaded = time.monotonic() - started
        assert not client.is_model_ready(EN)
        assert not client.is_model_ready(EN, "1")
        assert http.get(f"/v2/models/{EN}/ready").status_code == 503
        refused = http.post(f"/v1/models/{EN}/predict", content=CAT)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "model_not_ready"
        assert {"name": EN, "state": "UNAVAILABLE", "reason": "unloaded"} in index(http)

        started = time.monotonic()
        client.load_model(EN)
        loaded = time.monotonic() - started
        print(f"\nunload {unloaded:.2f}s, load (torch + ONNX, warmed) {loaded:.2f}s")
        assert client.is_model_ready(EN)
        assert client.is_model_ready(EN, "1") and client.is_model_ready(EN, "2")
        assert versions_in(index(http), EN) == {"1": "READY", "2": "READY"}
        assert answer_version(http.post(f"/v1/models/{EN}/versions/2/predict", content=CAT)) == "2"
        assert answer_version(http.post(f"/v1/models/{EN}/predict", content=CAT)) in ("1", "2")


def test_model_control_off_is_403(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_versioned(add_colour_model(repo, "colour"), (1,))
    server = ServerProcess(repo).start(tmp_path / "server.log")
    try:
        url = server.url.removeprefix("http://")
        with triton.InferenceServerClient(url=url) as client, client_for(server) as http:
            for operation in ("load", "unload"):
                response = http.post(f"/v2/repository/models/colour/{operation}")
                assert response.status_code == 403, response.text
                assert "model_control" in response.json()["error"]
            with pytest.raises(InferenceServerException) as refused:
                client.load_model("colour")
            assert str(refused.value.status()) == "403"
            # The index only reads: it answers either way. The model still serves.
            assert versions_in(index(http), "colour") == {"1": "READY"}
            assert answer_version(http.post("/v1/models/colour/predict", content=GREEN)) == "1"
    finally:
        server.stop()


# -- 3. a rollout under steady load: nothing lost, nothing served by a version not ready ----------


def test_rollout_under_steady_load_loses_nothing(small_server: ServerProcess) -> None:
    name = "rollout"
    folder = small_server.repository / name
    own: list[Observation] = []  # the test's own index reads, beside the poller's

    def read_index(client: httpx.Client) -> dict[str, str]:
        sent = time.monotonic()
        states = versions_in(index(client), name)
        own.append(Observation(sent, time.monotonic(), states))
        return states

    def step(client: httpx.Client, what: str) -> float:
        response = load(client, name)
        assert response.status_code == 200, f"{what}: {response.text}"
        return time.monotonic()

    with (
        client_for(small_server) as client,
        IndexPoller(small_server.url, name) as poller,
    ):
        while not poller.observations:
            time.sleep(0.01)
        with SteadyLoad(small_server.url, f"/v1/models/{name}/predict", GREEN, threads=3) as steady:
            time.sleep(0.5)
            # Version 2 (loading takes 0.5 s, so the index shows it LOADING) beside 1; traffic stays on 1.
            add_version(folder, 2, {"options": {"load_delay_s": 0.5}})
            loaded_2 = step(client, "add version 2")
            assert read_index(client) == {"1": "READY", "2": "READY"}
            time.sleep(0.5)
            set_model_keys(folder, traffic={"2": 100})
            moved = step(client, "traffic to version 2")
            time.sleep(0.5)
            shutil.rmtree(folder / "1")
            retired = step(client, "remove version 1")
            assert read_index(client) == {"2": "READY"}
            time.sleep(0.5)
        answers, sent = steady.answers, steady.sent

    observations = sorted(poller.observations + own, key=lambda o: o.received)
    by_status_version = Counter((a.status, a.version) for a in answers)
    phases = {
        "before version 2": [a for a in answers if a.received < loaded_2],
        "1 and 2 served": [a for a in answers if loaded_2 <= a.sent and a.received < moved],
        "traffic on 2": [a for a in answers if moved <= a.sent and a.received < retired],
        "1 removed": [a for a in answers if a.sent >= retired],
    }
    print(f"\nsent {sent}, answered {len(answers)}: by (status, version) {dict(by_status_version)}")
    for phase, group in phases.items():
        print(f"  {phase}: {dict(Counter(a.version for a in group))}")
    loading = [o for o in poller.observations if o.states.get("2") == "LOADING"]
    print(f"  index polls {len(poller.observations)}, version 2 LOADING in {len(loading)}")

    assert sent == len(answers), "requests sent and never answered"
    assert by_status_version.keys() <= {(200, "1"), (200, "2")}, by_status_version
    assert all(a.header_version == a.version for a in answers)
    assert loading, "the poller never saw version 2 loading"
    for answer in answers:
        # The index had reported the answering version READY before the request was sent...
        ready = [
            o
            for o in observations
            if o.received <= answer.sent and o.states.get(answer.version or "") == "READY"
        ]
        assert ready, f"version {answer.version} answered a request sent before the index reported it READY"
        # ... and no index read after it says that version was still loading.
        later = [o for o in observations if o.sent >= answer.received]
        assert all(o.states.get(answer.version or "") != "LOADING" for o in later), answer
    assert {a.version for a in phases["before version 2"]} == {"1"}
    assert {a.version for a in phases["1 and 2 served"]} == {"1"}  # traffic: {"1": 100}
    assert {a.version for a in phases["traffic on 2"]} == {"2"}
    assert {a.version for a in phases["1 removed"]} == {"2"} and len(phases["1 removed"]) >= 10


# -- 4. a shadow version: callers neither wait for it nor see it fail -----------------------------


def test_a_shadow_costs_callers_nothing_and_agrees(small_server: ServerProcess, modes: Path) -> None:
    images = [COLOURS["red"], COLOURS["green"], COLOURS["blue"], CAT]
    rounds = 40
    with client_for(small_server) as client:

        def timed(model: str, image: bytes) -> tuple[float, dict[str, Any]]:
            started = time.perf_counter()
            response = client.post(f"/v1/models/{model}/predict", content=image)
            elapsed = time.perf_counter() - started
            assert answer_version(response) == "1"
            return elapsed, response.json()["predictions"]

        pair = {"model": "shadowed", "primary": "1", "shadow": "2"}

        def shadowed(text: str, outcome: str) -> float:
            return metric_value(text, "inference_engine_shadow_requests_total", outcome=outcome, **pair)

        for model in ("shadowed", "plain"):  # warm both paths
            timed(model, GREEN)
        deadline = time.monotonic() + 10
        while shadowed(before := metrics(client), "compared") < 1:  # the warm-up's copy
            assert time.monotonic() < deadline, before
            time.sleep(0.05)
        latency: dict[str, list[float]] = {"shadowed": [], "plain": []}
        answers: list[Any] = []
        for n in range(rounds):  # interleaved, so drift hits both alike
            image = images[n % len(images)]
            for model in ("shadowed", "plain"):
                elapsed, predictions = timed(model, image)
                latency[model].append(elapsed)
                if model == "shadowed":
                    answers.append(predictions)
        with_shadow, without = (statistics.median(latency[m]) * 1000 for m in ("shadowed", "plain"))
        print(
            f"\ncaller latency, median of {rounds}: with shadow {with_shadow:.1f} ms, "
            f"without {without:.1f} ms"
        )
        assert with_shadow <= 1.5 * without + 10

        deadline = time.monotonic() + 10
        while shadowed(after := metrics(client), "compared") - shadowed(before, "compared") < rounds:
            assert time.monotonic() < deadline, after
            time.sleep(0.1)
        compared = shadowed(after, "compared") - shadowed(before, "compared")
        agreements = metric_value(after, "inference_engine_shadow_top1_agreements_total", **pair)
        ratio = metric_value(after, "inference_engine_shadow_agreement_ratio", **pair)
        differences = metric_value(after, "inference_engine_shadow_score_difference_count", **pair)
        difference_sum = metric_value(after, "inference_engine_shadow_score_difference_sum", **pair)
        print(
            f"shadow compared {compared:.0f}, agreements {agreements:.0f}, ratio {ratio}, "
            f"score difference sum {difference_sum}"
        )
        assert compared == rounds
        assert ratio == 1.0 and agreements == differences >= rounds
        assert difference_sum == 0.0
        assert "shadow" not in metrics_of_model(after, "plain")
        # Embeddings are compared by their cosine.
        embedded = client.post("/v1/models/shadowed/embed", content=GREEN)
        assert answer_version(embedded) == "1"
        deadline = time.monotonic() + 10
        while True:  # until the embedding's copy is compared (and counted)
            mid = metrics(client)
            cosines = metric_value(mid, "inference_engine_shadow_cosine_similarity_count", **pair)
            if (cosines >= 1 and shadowed(mid, "compared") - shadowed(before, "compared") > rounds) or (
                time.monotonic() > deadline
            ):
                break
            time.sleep(0.1)
        assert cosines == 1 and shadowed(mid, "compared") - shadowed(before, "compared") == rounds + 1, mid
        assert metric_value(mid, "inference_engine_shadow_agreement_ratio", **pair) == 1.0
        assert {o: shadowed(mid, o) - shadowed(before, o) for o in ("failed", "shed")} == {
            "failed": 0,
            "shed": 0,
        }

        # The shadow's predict now raises: every caller still gets the same answers, from version 1.
        (modes / "shadow_mode").write_text("raise")
        try:
            failing = [timed("shadowed", images[n % len(images)]) for n in range(rounds)]
            deadline = time.monotonic() + 10
            while True:  # until every copy is counted (the last runs after its caller's answer)
                after = metrics(client)
                copies = {o: shadowed(after, o) - shadowed(mid, o) for o in ("compared", "failed", "shed")}
                if sum(copies.values()) >= rounds or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            (modes / "shadow_mode").write_text("ok")
        assert [predictions for _, predictions in failing] == answers
        median = statistics.median(elapsed for elapsed, _ in failing) * 1000
        print(
            f"shadow raising: {rounds} answers, all 200 and as before (median {median:.1f} ms); "
            f"copies {copies}"
        )
        assert copies == {"compared": 0, "failed": rounds, "shed": 0}


def metrics_of_model(text: str, model: str) -> str:
    return "\n".join(line for line in text.splitlines() if f'model="{model}"' in line)


def test_embed_names_a_version_and_named_requests_get_no_shadow(small_server: ServerProcess) -> None:
    pair = {"model": "shadowed", "primary": "1", "shadow": "2"}
    with client_for(small_server) as client:
        before = metric_value(metrics(client), "inference_engine_shadow_requests_total", **pair)
        for version in ("1", "2"):
            embedded = client.post(f"/v1/models/shadowed/versions/{version}/embed", content=GREEN)
            assert answer_version(embedded) == version
            assert (
                client.post(f"/v1/models/shadowed/versions/{version}/predict", content=GREEN).status_code
                == 200
            )
        unknown = client.post("/v1/models/shadowed/versions/9/embed", content=GREEN)
        assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "model_not_found"
        time.sleep(0.3)  # a copy, had there been one, would be counted by now
        assert metric_value(metrics(client), "inference_engine_shadow_requests_total", **pair) == before


# -- 5. a broken folder: 400 with the reason, and what served keeps serving ----------------------


def test_a_broken_load_changes_nothing(small_server: ServerProcess) -> None:
    name = "steady"
    folder = small_server.repository / name

    def failure_reasons(client: httpx.Client) -> list[str]:
        return [e["reason"] for e in index(client) if e["name"] == name and "version" not in e]

    with (
        client_for(small_server) as client,
        SteadyLoad(small_server.url, f"/v1/models/{name}/predict", GREEN, threads=2) as steady,
    ):
        # A key model.yaml does not know.
        set_model_keys(folder, no_such_key=1)
        refused = load(client, name)
        print(f"\nunknown key: {refused.status_code} {refused.text}")
        assert refused.status_code == 400
        assert "no_such_key" in refused.json()["error"]
        assert answer_version(client.post(f"/v1/models/{name}/predict", content=GREEN)) == "1"
        assert versions_in(index(client), name) == {"1": "READY"}
        reasons = failure_reasons(client)
        assert (
            len(reasons) == 1 and reasons[0].startswith("last load failed: ") and "no_such_key" in reasons[0]
        )
        set_model_keys(folder, no_such_key=None)

        # A new version (it would take every request: no traffic key) whose weights are missing.
        add_version(folder, 2, {"handler": "torchscript", "weights": "missing.pt"})
        refused = load(client, name)
        print(f"missing weights: {refused.status_code} {refused.text}")
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert "version 2" in error and "missing.pt" in error
        assert answer_version(client.post(f"/v1/models/{name}/predict", content=GREEN)) == "1"
        assert client.post(f"/v1/models/{name}/versions/2/predict", content=GREEN).status_code == 404
        assert versions_in(index(client), name) == {"1": "READY"}
        reasons = failure_reasons(client)
        assert len(reasons) == 1 and "missing.pt" in reasons[0], reasons

        # Fixed: the load succeeds and the reason is gone.
        shutil.rmtree(folder / "2")
        assert load(client, name).status_code == 200
        assert failure_reasons(client) == []
        time.sleep(0.2)
    counts = steady.counts()
    print(f"steady load through the failed loads: sent {steady.sent}, answers {dict(counts)}")
    assert steady.sent == sum(counts.values()) and set(counts) == {(200, "1")}
