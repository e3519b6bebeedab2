"""CLIP and FLAVA through the real server: default labels, a fitted head, zero-shot, embeddings,
and a CLIP whose weights cannot be had, which fails alone with the command that fixes it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, ServerProcess, cat_jpeg, coffee_png
from tests.hf_models import PROJECTION_DIM, build_tiny_clip, build_tiny_flava
from tests.repository import add_default_model

pytestmark = pytest.mark.integration

FLAVA_LABELS = ["cat", "coffee", "rocket"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "IE_SERVER__DEFAULT_MODEL": "efficientnet_lite0"}


@pytest.fixture(scope="module")
def hf_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("hf-repository")
    add_default_model(repo)
    build_tiny_clip(repo / "clip")
    build_tiny_flava(repo / "flava", FLAVA_LABELS)
    process = ServerProcess(repo, env=OFFLINE)
    process.start(tmp_path_factory.mktemp("logs") / "hf-server.log")
    yield process
    process.stop()


@pytest.fixture
def client(hf_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hf_server.url, timeout=60) as c:
        yield c


def test_every_model_is_ready(client: httpx.Client) -> None:
    response = client.get("/ready")
    assert response.status_code == 200, response.text
    assert set(response.json()["models"]) == {"clip", "flava", "efficientnet_lite0"}


def test_clip_predict_ranks_its_default_labels(client: httpx.Client) -> None:
    response = client.post("/v1/models/clip/predict", content=cat_jpeg())
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert {p["label"] for p in predictions} == {"cat", "dog", "car"}
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-4)


def test_flava_predict_answers_its_head_labels(client: httpx.Client) -> None:
    response = client.post("/v1/models/flava/predict", params={"top_k": 3}, content=coffee_png())
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert {p["label"] for p in predictions} == set(FLAVA_LABELS)
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("model", ["clip", "flava"])
def test_labels_a_request_brings_are_ranked_zero_shot(client: httpx.Client, model: str) -> None:
    labels = "red car,small bird,cat"
    response = client.post(f"/v1/models/{model}/predict", params={"labels": labels}, content=cat_jpeg())
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert {p["label"] for p in predictions} == set(labels.split(","))
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-4)


def test_image_and_text_embeddings(client: httpx.Client) -> None:
    images = client.post("/v1/models/clip/embed", content=cat_jpeg())
    assert images.status_code == 200, images.text
    assert images.json()["dimension"] == PROJECTION_DIM
    texts = client.post("/v1/models/flava/embed", json={"texts": ["a photo of a cat", "dog"]})
    assert texts.status_code == 200, texts.text
    body = texts.json()
    assert body["modality"] == "text"
    assert [len(v) for v in body["embeddings"]] == [PROJECTION_DIM, PROJECTION_DIM]


def test_missing_clip_weights_fail_alone_with_the_pull_command(tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    add_default_model(repo)
    shutil.copytree(ROOT / "models" / "clip", repo / "clip")  # as shipped: no weights folder
    process = ServerProcess(repo, env=OFFLINE, args=["--model", "efficientnet_lite0", "--model", "clip"])
    process.start(tmp_path / "server.log")
    try:
        with httpx.Client(base_url=process.url, timeout=60) as client:
            ready = client.get("/ready")
            assert ready.status_code == 503
            reasons = ready.json()["models"]
            assert set(reasons) == {"clip"}
            assert "HF_HUB_OFFLINE is set" in reasons["clip"]
            assert (
                "on a machine with internet run: inference-engine pull openai/clip-vit-base-patch32 "
                f"--to {repo / 'clip' / 'weights'}"
            ) in reasons["clip"]
            served = client.post("/v1/models/efficientnet_lite0/predict", content=cat_jpeg())
            assert served.status_code == 200, served.text
            refused = client.post("/v1/models/clip/predict", content=cat_jpeg())
            assert refused.status_code == 503
    finally:
        process.stop()


def test_absent_weights_leave_clip_out_of_the_default_set(tmp_path: Path) -> None:
    """Serving a repository without naming models serves what can serve here, and says what not."""
    repo = tmp_path / "repository"
    add_default_model(repo)
    shutil.copytree(ROOT / "models" / "clip", repo / "clip")
    process = ServerProcess(repo, env=OFFLINE)
    process.start(tmp_path / "server.log")
    try:
        with httpx.Client(base_url=process.url, timeout=60) as client:
            assert client.get("/ready").status_code == 200
            assert [m["name"] for m in client.get("/v1/models").json()["models"]] == ["efficientnet_lite0"]
    finally:
        log = process.stop_log()
    assert "inference-engine pull openai/clip-vit-base-patch32" in log
