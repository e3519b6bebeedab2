"""The model repository: find model folders, validate ``model.yaml``, resolve handler classes.

Everything that can be checked without loading weights is checked here, and every message
names the folder and what is wrong, so a typo in a model folder is found at start-up with a
sentence a user can act on.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from inference_engine.errors import ModelLoadError
from inference_engine.models.base import ModelConfig, ModelFile, ModelHandler
from inference_engine.models.classifier import EfficientNetLiteClassifier, TorchScriptClassifier
from inference_engine.models.clip import ClipHandler
from inference_engine.models.flava import FlavaClassifier
from inference_engine.models.onnx_backend import OnnxImageModel
from inference_engine.settings import BatchingSettings

HandlerClass = type[ModelHandler[Any, Any]]

BUILTIN_HANDLERS: dict[str, HandlerClass] = {
    "efficientnet_lite": EfficientNetLiteClassifier,
    "torchscript": TorchScriptClassifier,
    "clip": ClipHandler,  # Hugging Face CLIPModel folder or hub id
    "flava_classifier": FlavaClassifier,  # FlavaModel folder or hub id + a fitted linear head
    "onnx": OnnxImageModel,  # a plain ONNX file (implies backend: onnx)
}

MODEL_FILE = "model.yaml"

# Hook name -> number of positional parameters after ``self``.
_CONTRACT = {"load": 1, "preprocess": 1, "predict": 1, "postprocess": 1}


@dataclass(frozen=True)
class ModelSpec:
    """A validated model folder: its config (batching resolved) and its handler class."""

    directory: Path
    config: ModelConfig
    handler_class: HandlerClass

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class BrokenModel:
    """A model folder that could not be validated; kept so readiness can name it."""

    name: str
    directory: Path
    error: str


def discover(repository: Path) -> list[Path]:
    """Sub-folders of ``repository`` that hold a ``model.yaml``, sorted by name."""
    if not repository.is_dir():
        raise ModelLoadError(f"model repository {repository} is not a folder")
    return sorted(p for p in repository.iterdir() if (p / MODEL_FILE).is_file())


def read_config(directory: Path, defaults: BatchingSettings) -> ModelConfig:
    """Parse and validate ``directory/model.yaml``, filling batching values from ``defaults``."""
    path = directory / MODEL_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc.strerror}") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: must be a mapping of settings")
    raw.setdefault("name", directory.name)
    try:
        config = ModelFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            + ("" if err["type"] == "missing" else f" (got {err.get('input')!r})")
            for err in exc.errors()
        )
        raise ModelLoadError(f"{path}: {problems}") from None
    if config.name != directory.name:
        raise ModelLoadError(f"{path}: name {config.name!r} must match the folder name {directory.name!r}")
    settled = config.model_dump(exclude_unset=True)
    settled["max_batch_size"] = config.max_batch_size or defaults.max_batch_size
    settled["max_batch_delay_ms"] = (
        defaults.max_batch_delay_ms if config.max_batch_delay_ms is None else config.max_batch_delay_ms
    )
    settled["max_queue_size"] = config.max_queue_size or defaults.max_queue_size
    return ModelConfig.model_validate(settled)


def resolve_handler(directory: Path, handler: str, backend: str = "torch") -> HandlerClass:
    """A built-in handler by name, or ``model.py[:Class]`` from the folder; contract checked.

    With ``backend: onnx`` a built-in name only names the model family: the exported graph
    carries the architecture, so every built-in runs as :class:`OnnxImageModel`. A custom
    ``model.py`` class is the user's own and is returned whatever the backend.
    """
    if handler in BUILTIN_HANDLERS:
        return OnnxImageModel if backend == "onnx" else BUILTIN_HANDLERS[handler]
    file_name, _, class_name = handler.partition(":")
    if not file_name.endswith(".py"):
        known = ", ".join(sorted(BUILTIN_HANDLERS))
        raise ModelLoadError(
            f"{directory}: unknown handler {handler!r}; use one of {known} or 'model.py:ClassName'"
        )
    module = _import_file(directory, directory / file_name)
    candidates = {
        name: obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, ModelHandler) and obj.__module__ == module.__name__
    }
    if class_name:
        found = vars(module).get(class_name)
        if found is None:
            raise ModelLoadError(f"{directory}: {file_name} defines no class {class_name!r}")
        if not (inspect.isclass(found) and issubclass(found, ModelHandler)):
            raise ModelLoadError(
                f"{directory}: {file_name}:{class_name} must subclass inference_engine.models.ModelHandler"
            )
        cls: HandlerClass = found
    elif len(candidates) == 1:
        cls = next(iter(candidates.values()))
    else:
        names = ", ".join(sorted(candidates)) or "none"
        raise ModelLoadError(
            f"{directory}: {file_name} must define exactly one ModelHandler subclass (found: {names}); "
            f"name one with handler: '{file_name}:ClassName'"
        )
    check_contract(directory, cls)
    return cls


def check_contract(directory: Path, cls: HandlerClass) -> None:
    """Refuse a handler class with abstract hooks left or hooks of the wrong shape."""
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise ModelLoadError(f"{directory}: handler {cls.__name__} does not implement {', '.join(missing)}")
    for hook, arity in _CONTRACT.items():
        params = list(inspect.signature(getattr(cls, hook)).parameters.values())[1:]
        positional = [
            p
            for p in params
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        if len(positional) != arity:
            raise ModelLoadError(
                f"{directory}: {cls.__name__}.{hook} must take {arity} argument(s) after self, "
                f"takes {len(positional)}"
            )
    if any("tasks" in vars(klass) for klass in cls.__mro__):
        raise ModelLoadError(
            f"{directory}: handler {cls.__name__} defines tasks(); what a model answers now follows from "
            "the capability classes it inherits (inference_engine.models.capabilities: ImageEmbedder, "
            "TextEncoder, ZeroShot, TensorInput); override capabilities() only to withhold one"
        )
    if not any(p.name == "top_k" for p in inspect.signature(cls.postprocess).parameters.values()):
        raise ModelLoadError(f"{directory}: {cls.__name__}.postprocess must accept the keyword top_k")


def _import_file(directory: Path, path: Path) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"{directory}: handler file {path.name} does not exist")
    module_name = f"inference_engine_user_models.{directory.name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{directory}: cannot import {path.name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(
            f"{directory}: importing {path.name} failed: {type(exc).__name__}: {exc}"
        ) from None
    return module


def scan_repository(
    repository: Path, defaults: BatchingSettings, only: list[str] | None = None
) -> tuple[list[ModelSpec], list[BrokenModel]]:
    """Validate every selected model folder; broken ones are returned, not raised."""
    folders = {p.name: p for p in discover(repository)}
    if only:
        unknown = [name for name in only if name not in folders]
        if unknown:
            available = ", ".join(sorted(folders)) or "none"
            raise ModelLoadError(
                f"model(s) {', '.join(unknown)} not found in {repository} (available: {available})"
            )
        folders = {name: folders[name] for name in only}
    specs: list[ModelSpec] = []
    broken: list[BrokenModel] = []
    for name, directory in sorted(folders.items()):
        try:
            config = read_config(directory, defaults)
            handler_class = resolve_handler(directory, config.handler, config.backend)
            specs.append(ModelSpec(directory, config, handler_class))
        except ModelLoadError as exc:
            broken.append(BrokenModel(name, directory, str(exc)))
    return specs, broken
