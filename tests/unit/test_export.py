"""``inference-engine export`` on a tiny real network: what it writes, what it verifies, what it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from skimage import data

from inference_engine import cli, export
from inference_engine.errors import ModelLoadError
from inference_engine.export import ExportError, export_onnx, synthetic_images
from inference_engine.models.loader import scan_repository
from inference_engine.models.onnx_backend import OnnxImageModel
from inference_engine.settings import BatchingSettings
from tests.repository import add_colour_model, add_model, add_tiny_cnn


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    add_tiny_cnn(repo, max_batch_size=3, max_batch_delay_ms=0)
    return repo


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "cat.jpg"
    Image.fromarray(data.chelsea()).save(path, quality=90)
    return path


def hidden_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_export_writes_a_folder_that_serves_like_the_original(repo: Path, photo: Path) -> None:
    report = export_onnx(repo / "tiny_cnn", samples=[photo])

    out = repo / "tiny_cnn_onnx"
    assert report.output == out
    assert report.output_kind == "logits"
    assert report.inputs == 4  # the photo and three synthetic images
    assert report.max_abs_diff is not None
    assert report.max_abs_diff < 1e-4
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "model.onnx", "model.yaml"]
    written = yaml.safe_load((out / "model.yaml").read_text())
    assert written["name"] == "tiny_cnn_onnx"
    assert (written["handler"], written["backend"], written["weights"]) == (
        "torchscript",
        "onnx",
        "model.onnx",
    )
    assert written["options"] == {"output": "logits"}
    assert (written["max_batch_size"], written["max_batch_delay_ms"]) == (3, 0)
    assert "max_queue_size" not in written  # unset in the source: the global default keeps applying
    assert written["preprocessing"]["resize"] == 64
    assert written["preprocessing"]["crop"] == 56
    assert (out / "labels.txt").read_text().split() == ["alpha", "beta", "gamma", "delta"]
    assert hidden_leftovers(repo) == []

    specs, broken = scan_repository(repo, BatchingSettings())
    assert broken == []
    by_name = {s.name: s for s in specs}
    assert by_name["tiny_cnn_onnx"].handler_class is OnnxImageModel
    served = OnnxImageModel(by_name["tiny_cnn_onnx"].config, out)
    served.load("cpu")
    (output,) = served.predict([served.preprocess(Image.open(photo).convert("RGB"))])
    assert isinstance(output, np.ndarray)
    assert float(output.sum()) == pytest.approx(1.0, abs=1e-5)


EMBEDDER = """
import torch

from inference_engine.models.classifier import TorchImageClassifier


class Embedder(TorchImageClassifier):
    def build_module(self):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten())

    def onnx_export(self):
        return self.module, "embedding"
"""


def test_a_custom_handler_can_export_an_embedder(tmp_path: Path) -> None:
    folder = add_model(tmp_path, "emb", {"handler": "model.py", "labels": ["unused"],
                                         "preprocessing": {"resize": 40, "crop": 32}})  # fmt: skip
    (folder / "model.py").write_text(EMBEDDER)
    report = export_onnx(folder)
    assert report.output_kind == "embedding"
    written = yaml.safe_load((tmp_path / "emb_onnx" / "model.yaml").read_text())
    assert (written["handler"], written["labels"], written["options"]) == (
        "onnx",
        None,
        {"output": "embedding"},
    )
    spec = {s.name: s for s in scan_repository(tmp_path, BatchingSettings())[0]}["emb_onnx"]
    served = spec.handler_class(spec.config, spec.directory)
    served.load("cpu")
    assert served.capabilities().tasks == frozenset({"embed_image"})
    assert served.embedding_dimension() == 6
    (output,) = served.predict([served.preprocess(Image.fromarray(data.coffee()))])
    assert float(np.linalg.norm(output)) == pytest.approx(1.0, abs=1e-5)


def test_a_parity_failure_writes_nothing(repo: Path) -> None:
    with pytest.raises(
        ExportError, match=r"parity check failed: max \|torch - onnx\| = .* exceeds the tolerance"
    ):
        export_onnx(repo / "tiny_cnn", tolerance=1e-12)
    assert sorted(p.name for p in repo.iterdir()) == ["tiny_cnn"]


def test_an_existing_output_is_kept_unless_forced(repo: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "mine"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="already exists; pass --force") as raised:
        export_onnx(repo / "tiny_cnn", target)
    assert raised.value.exit_code == 2
    assert (target / "keep.txt").exists()
    report = export_onnx(repo / "tiny_cnn", target, force=True, check=False)
    assert report.max_abs_diff is None
    assert not (target / "keep.txt").exists()
    assert yaml.safe_load((target / "model.yaml").read_text())["name"] == "mine"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda repo: add_colour_model(repo, "colour"), "has no onnx_export"),
        (
            lambda repo: add_model(repo, "o", {"handler": "onnx", "weights": "m.onnx"}),
            "already an ONNX model",
        ),
    ],
    ids=["custom-handler", "already-onnx"],
)
def test_folders_that_cannot_be_exported_are_refused(tmp_path: Path, make: object, expected: str) -> None:
    folder = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(ExportError, match=expected) as raised:
        export_onnx(folder)
    assert raised.value.exit_code == 2


def test_a_broken_source_folder_is_a_load_error(tmp_path: Path) -> None:
    folder = add_model(tmp_path, "ts", {"handler": "torchscript", "weights": "missing.pt"})
    with pytest.raises(ModelLoadError, match=r"missing\.pt does not exist"):
        export_onnx(folder)
    assert hidden_leftovers(tmp_path) == []


def test_missing_exporter_packages_name_the_extra(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "EXPORT_PACKAGES", ("onnx", "onnxscript_not_installed"))
    with pytest.raises(
        ExportError, match=r"missing: onnxscript_not_installed.*pip install 'inference-engine\[export\]'"
    ):
        export_onnx(repo / "tiny_cnn")


def test_synthetic_images_fill_the_resize_square() -> None:
    images = synthetic_images(64)
    assert [i.size for i in images] == [(64, 64)] * 3
    assert len({i.tobytes() for i in images}) == 3


def test_the_command_line_reports_and_sets_the_exit_code(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = str(repo / "tiny_cnn")
    assert cli.main(["export", model, "--format", "onnx", "--opset", "17", "--tolerance", "1e-12"]) == 1
    assert "parity check failed" in capsys.readouterr().err
    assert cli.main(["export", model]) == 0
    out = capsys.readouterr().out
    assert "tiny_cnn_onnx (opset 17, output logits)" in out
    assert "max |torch - onnx| = " in out
    assert cli.main(["export", model]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["export", model, "--force", "--no-check", "--output", str(repo / "other")]) == 0
    assert "not verified (--no-check)" in capsys.readouterr().out
    assert cli.main(["export", model, "--tolerance", "-1"]) == 2
    assert cli.main(["export", str(repo / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
