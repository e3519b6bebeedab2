"""ONNX models in a real server: the exported EfficientNet-Lite0 beside the torch one, and open_nsfw.

The export runs once, through the real command line (``python -m inference_engine export``), on
a copy of the shipped ``models/efficientnet_lite0``; ``models/open_nsfw`` is served as shipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from skimage import data

from tests.helpers import ROOT, ServerProcess, encode

pytestmark = pytest.mark.integration

PHOTOS = {
    name: encode(getattr(data, name)(), "JPEG", quality=92)
    for name in ("chelsea", "coffee", "astronaut", "rocket")
}


@pytest.fixture(scope="session")
def onnx_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The torch default model, its ONNX export (made by the CLI) and open_nsfw; plus the CLI's output."""
    repo = tmp_path_factory.mktemp("onnx_repository")
    shutil.copytree(ROOT / "models" / "efficientnet_lite0", repo / "efficientnet_lite0")
    shutil.copytree(ROOT / "models" / "open_nsfw", repo / "open_nsfw")
    samples = tmp_path_factory.mktemp("samples")
    for name, payload in PHOTOS.items():
        (samples / f"{name}.jpg").write_bytes(payload)
    command = [
        sys.executable, "-m", "inference_engine", "export", str(repo / "efficientnet_lite0"),
        "--format", "onnx", "--sample", str(samples / "chelsea.jpg"), "--sample", str(samples / "coffee.jpg"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return repo, done.stdout


@pytest.fixture(scope="module")
def server(
    onnx_repository: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    repo, _ = onnx_repository
    process = ServerProcess(repo).start(tmp_path_factory.mktemp("logs") / "onnx_server.log")
    yield process
    process.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def predictions(client: httpx.Client, model: str, payload: bytes, top_k: int = 5) -> list[dict[str, Any]]:
    response = client.post(f"/v1/models/{model}/predict", content=payload, params={"top_k": top_k})
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()["predictions"]
    return result


def test_the_cli_export_verified_parity(onnx_repository: tuple[Path, str]) -> None:
    repo, stdout = onnx_repository
    assert "parity on 5 inputs: max |torch - onnx| = " in stdout
    assert sorted(p.name for p in (repo / "efficientnet_lite0_onnx").iterdir()) == [
        "model.onnx",
        "model.yaml",
    ]


def test_every_model_is_ready(client: httpx.Client) -> None:
    assert client.get("/ready").status_code == 200
    states = {m["name"]: m["state"] for m in client.get("/v1/models").json()["models"]}
    assert states == {"efficientnet_lite0": "ready", "efficientnet_lite0_onnx": "ready", "open_nsfw": "ready"}


@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_the_onnx_export_answers_like_torch(client: httpx.Client, photo: str) -> None:
    torch_answer = predictions(client, "efficientnet_lite0", PHOTOS[photo])
    onnx_answer = predictions(client, "efficientnet_lite0_onnx", PHOTOS[photo])
    assert onnx_answer[0]["label"] == torch_answer[0]["label"]
    assert onnx_answer[0]["score"] == pytest.approx(torch_answer[0]["score"], abs=1e-3)


def test_the_export_keeps_the_meaning(client: httpx.Client) -> None:
    assert predictions(client, "efficientnet_lite0_onnx", PHOTOS["coffee"], 1)[0]["label"] == "espresso"
    cat = {p["label"] for p in predictions(client, "efficientnet_lite0_onnx", PHOTOS["chelsea"], 3)}
    assert cat & {"tabby", "tiger cat", "Egyptian cat"}


@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_open_nsfw_scores_photos(client: httpx.Client, photo: str) -> None:
    answer = predictions(client, "open_nsfw", PHOTOS[photo])
    assert {p["label"] for p in answer} == {"sfw", "nsfw"}
    assert sum(p["score"] for p in answer) == pytest.approx(1.0, abs=1e-4)
    if photo in ("chelsea", "coffee"):
        assert answer[0]["label"] == "sfw"
        assert answer[0]["score"] > 0.9


def test_onnx_model_metadata(client: httpx.Client) -> None:
    meta = client.get("/v1/models/open_nsfw").json()["metadata"]
    assert meta["input_size"] == [224, 224, 3]
    assert meta["labels_count"] == 2
    assert meta["backend"]["providers"] == ["CPUExecutionProvider"]
    exported = client.get("/v1/models/efficientnet_lite0_onnx").json()["metadata"]
    assert exported["input_size"] == [3, 224, 224]
    assert exported["labels_count"] == 1000
