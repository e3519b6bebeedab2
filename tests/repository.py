"""Build model repositories for tests: the real default model plus small custom ones."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from tests.helpers import FIXTURE_MODELS, ROOT


def add_model(repo: Path, name: str, config: dict[str, Any], model_py: str | None = None) -> Path:
    folder = repo / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(yaml.safe_dump({"name": name, **config}))
    if model_py is not None:
        shutil.copy(FIXTURE_MODELS / model_py / "model.py", folder / "model.py")
    return folder


def add_default_model(repo: Path) -> Path:
    folder = repo / "efficientnet_lite0"
    shutil.copytree(ROOT / "models" / "efficientnet_lite0", folder)
    return folder


def add_colour_model(repo: Path, name: str, **options: Any) -> Path:
    settings = options.pop("settings", {})
    config = {"handler": "model.py", "labels": None, "options": options, **settings}
    return add_model(repo, name, config, model_py="colour")


class TinyCNN(torch.nn.Module):
    """A few-thousand-parameter CNN: serving overhead dominates its cost."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
        )
        self.head = torch.nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def add_tiny_cnn(repo: Path, name: str = "tiny_cnn", **settings: Any) -> Path:
    folder = repo / name
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(TinyCNN().eval()), str(folder / "tiny.pt"))
    (folder / "labels.txt").write_text("alpha\nbeta\ngamma\ndelta\n")
    config = {
        "handler": "torchscript",
        "weights": "tiny.pt",
        "labels": "labels.txt",
        "preprocessing": {"resize": 64, "crop": 56},
        **settings,
    }
    return add_model(repo, name, config)


def add_colour_text_model(repo: Path, name: str = "colours", **settings: Any) -> Path:
    """A zero-shot/embedding model over colour words (see tests/fixtures/models/colour_text)."""
    config = {"handler": "model.py", "labels": ["red", "green", "blue"], **settings}
    return add_model(repo, name, config, model_py="colour_text")


def add_faulty_model(repo: Path, name: str, mode_file: Path, **options: Any) -> Path:
    """A model whose fault a test switches at run time by rewriting ``mode_file``.

    See tests/fixtures/models/faulty for the modes and ``options``; ``settings`` are model.yaml
    keys (``max_batch_size``, ...), as for :func:`add_colour_model`.
    """
    settings = options.pop("settings", {})
    config = {
        "handler": "model.py",
        "labels": None,
        "options": {"mode_file": str(mode_file), **options},
        **settings,
    }
    return add_model(repo, name, config, model_py="faulty")
