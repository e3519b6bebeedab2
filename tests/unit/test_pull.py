"""``inference-engine pull``, its network call replaced by a local folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants
from PIL import Image

from inference_engine import cli
from inference_engine.models import weights
from inference_engine.models.clip import ClipHandler
from inference_engine.models.loader import read_config
from inference_engine.models.weights import HubRef
from inference_engine.settings import BatchingSettings
from tests.hf_models import build_tiny_clip

HUB_ID = "openai/clip-vit-base-patch32"


@pytest.fixture(scope="module")
def hub_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the hub would serve: a tiny CLIP's Hugging Face folder."""
    return build_tiny_clip(tmp_path_factory.mktemp("hub") / "clip") / "weights"


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, hub_snapshot: Path) -> list[tuple[HubRef, Path | None, bool]]:
    """``download_snapshot`` replaced by a copy of ``hub_snapshot``; the calls are recorded."""
    calls: list[tuple[HubRef, Path | None, bool]] = []

    def copy(hub: HubRef, *, local_dir: Path | None = None, offline: bool = False) -> Path:
        calls.append((hub, local_dir, offline))
        target = local_dir or hub_snapshot.parent / "cache"
        shutil.copytree(hub_snapshot, target, dirs_exist_ok=True)
        return target

    monkeypatch.setattr(weights, "download_snapshot", copy)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_pull_writes_a_folder_the_model_then_serves(
    fake_hub: list[tuple[HubRef, Path | None, bool]],
    hub_snapshot: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tmp_path / "clip"
    shutil.copytree(hub_snapshot.parent, model, ignore=shutil.ignore_patterns("weights"))
    assert cli.main(["pull", HUB_ID, "--to", str(model / "weights")]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"pulled {HUB_ID} to {model / 'weights'} (5 files, ")
    assert f"'weights: weights' in {model / 'model.yaml'}" in captured.err
    assert fake_hub == [(HubRef(HUB_ID), model / "weights", False)]

    pulled = ClipHandler(read_config(model, BatchingSettings()), model)
    pulled.load("cpu")
    source = ClipHandler(read_config(hub_snapshot.parent, BatchingSettings()), hub_snapshot.parent)
    source.load("cpu")
    image = Image.new("RGB", (40, 40), (10, 120, 200))
    np.testing.assert_array_equal(
        pulled.predict([pulled.preprocess(image)])[0].embedding,
        source.predict([source.preprocess(image)])[0].embedding,
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["pull", HUB_ID, "--revision", "v1"], HubRef(HUB_ID, "v1")),
        (["pull", f"{HUB_ID}@abc"], HubRef(HUB_ID, "abc")),
        (["pull", f"{HUB_ID}@abc", "--revision", "def"], HubRef(HUB_ID, "def")),
    ],
)
def test_pull_revisions(
    fake_hub: list[tuple[HubRef, Path | None, bool]], argv: list[str], expected: HubRef
) -> None:
    assert cli.main(argv) == 0
    assert fake_hub[0][0] == expected
    assert fake_hub[0][1] is None  # no --to: the Hugging Face cache


def test_pull_offline_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real download path with HF_HUB_OFFLINE=1 over an empty cache: exit 1, no traceback."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert cli.main(["pull", HUB_ID, "--to", str(tmp_path / "weights")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"inference-engine: cannot pull {HUB_ID}: the hub cannot be reached (HF_HUB_OFFLINE is set)"
    )
    assert "Traceback" not in err
    assert not (tmp_path / "weights").exists() or not any((tmp_path / "weights").glob("*.safetensors"))


def test_pull_refuses_what_is_not_a_hub_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pull", "just-a-name"]) == 2
    assert "is not a hub id (org/name[@revision])" in capsys.readouterr().err
