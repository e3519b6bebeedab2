"""The loader finds model folders and names the folder and the problem when one is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from inference_engine.errors import ModelLoadError
from inference_engine.models.classifier import EfficientNetLiteClassifier, TorchScriptClassifier
from inference_engine.models.config import ModelFile
from inference_engine.models.efficientnet_onnx import EfficientNetLiteOnnx
from inference_engine.models.loader import read_config, resolve_handler, scan_repository, settle
from inference_engine.settings import BatchingSettings
from tests.helpers import ROOT
from tests.repository import add_colour_model, add_model

DEFAULTS = BatchingSettings(max_batch_size=16, max_batch_delay_ms=7, max_queue_size=99)

GOOD_HANDLER = """
from inference_engine.models import ModelHandler

class Good(ModelHandler):
    def load(self, device): ...
    def preprocess(self, image): return image
    def predict(self, items): return list(items)
    def postprocess(self, output, *, top_k): return {}
"""


def write_handler(folder: Path, source: str, name: str = "model.py") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(source)


def test_the_default_model_folder_validates() -> None:
    specs, broken = scan_repository(ROOT / "models", DEFAULTS)
    assert broken == []
    by_name = {s.name: s for s in specs}
    assert {"efficientnet_lite0", "open_nsfw"} <= set(by_name)
    assert by_name["open_nsfw"].config.backend == "onnx"
    spec = by_name["efficientnet_lite0"]
    assert spec.config.backend == "auto"  # ONNX Runtime, torch if the conversion fails
    assert spec.handler_class is EfficientNetLiteOnnx
    assert spec.fallback is EfficientNetLiteClassifier
    assert spec.config.max_batch_size == 8  # model.yaml wins over the global default
    assert spec.config.labels == "imagenet"


def test_batching_defaults_fill_what_model_yaml_leaves_out(tmp_path: Path) -> None:
    folder = add_model(tmp_path, "m", {"handler": "torchscript", "weights": "x.pt", "max_batch_delay_ms": 0})
    config = read_config(folder, DEFAULTS)
    assert (config.max_batch_size, config.max_batch_delay_ms, config.max_queue_size) == (16, 0, 99)


CPU_AND_CUDA = {
    "handler": "torchscript",
    "weights": "x.pt",
    "max_batch_size": 4,
    "instances": 2,
    "cuda": {"max_batch_size": 64, "max_batch_delay_ms": 10, "instances": 1, "dtype": "float16"},
}


@pytest.mark.parametrize(
    ("device", "cuda_available", "expected"),
    [
        ("cpu", True, (4, 7, 2, "float32")),  # CPU values, the server's delay
        ("auto", False, (4, 7, 2, "float32")),
        ("auto", True, (64, 10, 1, "float16")),  # the cuda section wins
        ("cuda:1", False, (64, 10, 1, "float16")),  # asked for: loading says if it is missing
    ],
)
def test_the_cuda_section_replaces_cpu_values_on_a_gpu(
    device: str, cuda_available: bool, expected: tuple[int, float, int, str]
) -> None:
    config = settle(
        ModelFile.model_validate({"name": "m", **CPU_AND_CUDA, "device": device}), DEFAULTS, cuda_available
    )
    assert (config.max_batch_size, config.max_batch_delay_ms, config.instances, config.dtype) == expected
    assert config.max_queue_size == 99  # not in the cuda section: the server's default


def test_the_shipped_default_model_has_gpu_batching() -> None:
    folder = ROOT / "models" / "efficientnet_lite0"
    (spec,) = scan_repository(ROOT / "models", DEFAULTS, ["efficientnet_lite0"])[0]
    assert spec.config.max_batch_size == 8  # device: cpu
    raw = ModelFile.model_validate({**yaml.safe_load((folder / "model.yaml").read_text()), "device": "auto"})
    on_gpu = settle(raw, DEFAULTS, cuda_available=True)
    assert on_gpu.max_batch_size >= 32 and on_gpu.max_queue_size >= 4 * on_gpu.max_batch_size


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"handler": "torchscript", "cuda": {"max_batch_size": 0}}, "cuda.max_batch_size"),
        ({"handler": "torchscript", "cuda": {"preprocessing": {}}}, "cuda.preprocessing"),
        ({"handler": "torchscript", "max_batch_size": 0}, "max_batch_size"),
        ({"handler": "torchscript", "instances": "many"}, "instances"),
        ({"handler": "torchscript", "colour": "blue"}, "colour"),
        ({"version": "2"}, "handler"),
        ({"handler": "torchscript", "preprocessing": {"resize": 100, "crop": 200}}, "crop"),
        ({"handler": "torchscript", "dtype": "int8"}, "dtype"),
    ],
)
def test_bad_model_yaml_names_the_file_and_the_key(
    tmp_path: Path, config: dict[str, object], expected: str
) -> None:
    folder = add_model(tmp_path, "m", config)
    with pytest.raises(ModelLoadError) as raised:
        read_config(folder, DEFAULTS)
    assert str(folder / "model.yaml") in str(raised.value)
    assert expected in str(raised.value)


def test_yaml_that_does_not_parse_or_is_not_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.yaml").write_text("handler: [unclosed\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ModelLoadError, match="not valid YAML"):
        read_config(tmp_path / "a", DEFAULTS)
    with pytest.raises(ModelLoadError, match="mapping"):
        read_config(tmp_path / "b", DEFAULTS)


def test_name_must_match_the_folder(tmp_path: Path) -> None:
    folder = add_model(tmp_path, "m", {"handler": "torchscript"})
    (folder / "model.yaml").write_text("name: other\nhandler: torchscript\n")
    with pytest.raises(ModelLoadError, match="must match the folder name"):
        read_config(folder, DEFAULTS)


def test_builtin_handlers_resolve_and_unknown_ones_are_listed(tmp_path: Path) -> None:
    assert resolve_handler(tmp_path, "torchscript") is TorchScriptClassifier
    with pytest.raises(ModelLoadError) as raised:
        resolve_handler(tmp_path, "resnet")
    assert "efficientnet_lite" in str(raised.value)
    assert "torchscript" in str(raised.value)


def test_custom_handler_from_model_py(tmp_path: Path) -> None:
    write_handler(tmp_path, GOOD_HANDLER)
    assert resolve_handler(tmp_path, "model.py").__name__ == "Good"
    assert resolve_handler(tmp_path, "model.py:Good").__name__ == "Good"


@pytest.mark.parametrize(
    ("source", "handler", "expected"),
    [
        (GOOD_HANDLER.replace("    def predict(self, items): return list(items)\n", ""), "model.py",
         "does not implement predict"),
        (GOOD_HANDLER.replace("def predict(self, items)", "def predict(self)"), "model.py",
         "predict must take 1 argument"),
        (GOOD_HANDLER.replace("(self, image)", "(self, image, extra)"), "model.py",
         "preprocess must take 1 argument"),
        (GOOD_HANDLER.replace("*, top_k", "*, k"), "model.py", "top_k"),
        (GOOD_HANDLER + "\nclass Other(Good): ...\n", "model.py", "exactly one"),
        (GOOD_HANDLER, "model.py:Missing", "no class 'Missing'"),
        (GOOD_HANDLER + "\nclass NotAHandler: ...\n", "model.py:NotAHandler", "must subclass"),
        ("import no_such_module\n", "model.py", "importing model.py failed: ModuleNotFoundError"),
        ("def broken(:\n", "model.py", "SyntaxError"),
        (GOOD_HANDLER, "other.py", "other.py does not exist"),
    ],
)  # fmt: skip
def test_contract_violations_are_found_at_load_time(
    tmp_path: Path, source: str, handler: str, expected: str
) -> None:
    write_handler(tmp_path, source)
    with pytest.raises(ModelLoadError) as raised:
        resolve_handler(tmp_path, handler)
    assert str(tmp_path) in str(raised.value)
    assert expected in str(raised.value)


def test_scan_keeps_broken_folders_and_validates_the_rest(tmp_path: Path) -> None:
    add_colour_model(tmp_path, "good")
    add_model(tmp_path, "bad", {"handler": "nope"})
    (tmp_path / "not_a_model").mkdir()
    specs, broken = scan_repository(tmp_path, DEFAULTS)
    assert [s.name for s in specs] == ["good"]
    assert [(b.name, "nope" in b.error) for b in broken] == [("bad", True)]


def test_scan_selects_models_and_rejects_unknown_names(tmp_path: Path) -> None:
    add_colour_model(tmp_path, "a")
    add_colour_model(tmp_path, "b")
    specs, _ = scan_repository(tmp_path, DEFAULTS, only=["b"])
    assert [s.name for s in specs] == ["b"]
    with pytest.raises(ModelLoadError, match=r"c not found .* \(available: a, b\)"):
        scan_repository(tmp_path, DEFAULTS, only=["c"])


def test_a_missing_repository_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="is not a folder"):
        scan_repository(tmp_path / "nowhere", DEFAULTS)


def test_admission_and_cache_settle_from_the_file_or_the_server() -> None:
    plain = settle(ModelFile.model_validate({"name": "m", "handler": "torchscript"}), DEFAULTS)
    assert plain.admission == DEFAULTS.admission == "predictive"
    assert not plain.cache.enabled and not plain.cache.merge_in_flight  # off unless asked for
    own = settle(
        ModelFile.model_validate(
            {"name": "m", "handler": "torchscript", "admission": "queue_only", "cache": {"enabled": True}}
        ),
        DEFAULTS,
    )
    assert own.admission == "queue_only" and own.cache.enabled and own.cache.max_bytes == 64 * 1024 * 1024


def test_a_model_that_is_not_deterministic_cannot_re_use_answers() -> None:
    with pytest.raises(ValueError, match="need deterministic: true"):
        ModelFile.model_validate(
            {
                "name": "m",
                "handler": "torchscript",
                "deterministic": False,
                "cache": {"merge_in_flight": True},
            }
        )
    sampling = ModelFile.model_validate({"name": "m", "handler": "torchscript", "deterministic": False})
    assert not sampling.deterministic
