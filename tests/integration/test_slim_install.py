"""The slim install: the server from requirements/slim.txt alone, in a fresh venv without torch.

It installs the way ``make serve`` does (``tools/install.sh VENV slim``), then serves the shipped
model repository from that venv: EfficientNet-Lite0 converted to ONNX at load and open_nsfw answer,
the torch models are left out naming the extra that brings them, and asked for by name they fail
to load with that message while the others keep serving.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, ServerProcess, cat_jpeg

pytestmark = pytest.mark.integration

TORCH_MODULES = ("torch", "transformers", "safetensors", "efficientnet_lite_pytorch", "triton")
EXTRA = "pip install 'inference-engine[torch]'"


@pytest.fixture(scope="module")
def slim_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("slim") / "venv"
    result = subprocess.run(
        ["bash", str(ROOT / "tools" / "install.sh"), str(venv), "slim"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return venv / "bin" / "python"


def test_the_slim_venv_holds_no_torch(slim_python: Path) -> None:
    probe = (
        "import importlib.metadata as m, importlib.util as u;"
        f"print(*[n for n in {TORCH_MODULES!r} if u.find_spec(n)]);"
        "print(*sorted(d.metadata['Name'].lower() for d in m.distributions()))"
    )
    result = subprocess.run([str(slim_python), "-c", probe], capture_output=True, text=True, check=True)
    importable, installed = result.stdout.splitlines()
    assert importable == ""
    names = installed.split()
    assert {"inference-engine", "inference-engine-client", "onnxruntime", "onnx"} <= set(names)
    assert not [n for n in names if n.startswith(("nvidia-", "torch", "triton"))], names


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """The shipped repository, with CLIP given a hub id so that only the missing extra stops it."""
    repo = tmp_path / "models"
    shutil.copytree(ROOT / "models", repo)
    clip = repo / "clip" / "model.yaml"
    clip.write_text(clip.read_text().replace("weights: weights ", "weights: openai/clip-vit-base-patch32 "))
    return repo


def test_the_slim_server_serves_the_default_models(
    slim_python: Path, repository: Path, tmp_path: Path
) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": os.environ.get("PATH", "")}
    server = ServerProcess(repository, env=env, python=str(slim_python)).start(tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/ready").status_code == 200
            served = {m["name"] for m in client.get("/v1/models").json()["models"]}
            assert {"efficientnet_lite0", "open_nsfw"} <= served
            assert "clip" not in served
            metadata = client.get("/v2/models/efficientnet_lite0").json()
            assert metadata["platform"] == "onnxruntime_onnx"
            files = {"file": ("cat.jpg", cat_jpeg(), "image/jpeg")}
            cat = client.post("/v1/models/efficientnet_lite0/predict", files=files)
            assert cat.status_code == 200, cat.text
            assert cat.json()["predictions"][0]["label"] in {"tabby", "tiger cat", "Egyptian cat"}
            nsfw = client.post("/v1/models/open_nsfw/predict", files=files)
            assert nsfw.status_code == 200, nsfw.text
    finally:
        log = server.stop_log()
    assert f"ClipHandler needs torch, which is not installed: {EXTRA}" in log
    assert "converted EfficientNet-Lite checkpoint to ONNX" in log


def test_a_torch_model_asked_for_by_name_names_the_extra(
    slim_python: Path, repository: Path, tmp_path: Path
) -> None:
    args = ["--model", "clip", "--model", "efficientnet_lite0"]
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": os.environ.get("PATH", "")}
    server = ServerProcess(repository, args=args, env=env, python=str(slim_python))
    server.start(tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            ready = client.get("/ready")
            assert ready.status_code == 503
            assert EXTRA in ready.json()["models"]["clip"]
            files = {"file": ("cat.jpg", cat_jpeg(), "image/jpeg")}
            assert client.post("/v1/models/efficientnet_lite0/predict", files=files).status_code == 200
    finally:
        server.stop()
