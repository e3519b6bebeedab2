"""The model repository: find model folders, validate ``model.yaml``, resolve handler classes.

Everything that can be checked without loading weights is checked here, and every message
names the folder and what is wrong, so a typo in a model folder is found at start-up with a
sentence a user can act on.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from inference_engine.errors import ModelLoadError
from inference_engine.models.base import ModelConfig, ModelFile, ModelHandler
from inference_engine.models.versions import ServingPlan, check_version_file, merged_settings, version_folders
from inference_engine.settings import BatchingSettings

HandlerClass = type[ModelHandler[Any, Any]]

# Imported when a model asks for them, so that the slim install (no torch) imports none of the
# torch handlers: ``module:Class``.
BUILTIN_HANDLERS: dict[str, str] = {
    "efficientnet_lite": "inference_engine.models.classifier:EfficientNetLiteClassifier",
    "torchscript": "inference_engine.models.classifier:TorchScriptClassifier",
    "clip": "inference_engine.models.clip:ClipHandler",  # Hugging Face CLIPModel folder or hub id
    # FlavaModel folder or hub id + a fitted linear head
    "flava_classifier": "inference_engine.models.flava:FlavaClassifier",
    # a plain ONNX file (implies backend: onnx)
    "onnx": "inference_engine.models.onnx_backend:OnnxImageModel",
}
# Built-ins with an ONNX Runtime handler of their own that needs no export (the graph is written
# from the torch checkpoint at load); every other built-in runs an exported graph as OnnxImageModel.
ONNX_HANDLERS: dict[str, str] = {
    "efficientnet_lite": "inference_engine.models.efficientnet_onnx:EfficientNetLiteOnnx",
}
# What the torch handlers import that the slim install does not have, and how to get it.
TORCH_MODULES = frozenset({"torch", "transformers", "safetensors", "efficientnet_lite_pytorch"})
TORCH_EXTRA = "pip install 'inference-engine[torch]'"

MODEL_FILE = "model.yaml"

# Hook name -> number of positional parameters after ``self``.
_CONTRACT = {"load": 1, "preprocess": 1, "predict": 1, "postprocess": 1}


@dataclass(frozen=True)
class ModelSpec:
    """One validated model version: its folder, config (batching resolved), handler class, and
    the plan its model's requests follow."""

    directory: Path
    config: ModelConfig
    handler_class: HandlerClass
    plan: ServingPlan = field(default_factory=ServingPlan)
    # ``backend: auto``: what serves when ``handler_class`` (the ONNX Runtime path) fails to load.
    fallback: HandlerClass | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> str:
        return self.config.version


@dataclass(frozen=True)
class BrokenModel:
    """A model folder that could not be validated; kept so readiness can name it."""

    name: str
    directory: Path
    error: str
    version: str | None = None  # None: the model's shared model.yaml is wrong, no version serves
    plan: ServingPlan | None = None


def discover(repository: Path) -> list[Path]:
    """Sub-folders of ``repository`` that hold a ``model.yaml``, sorted by name."""
    if not repository.is_dir():
        raise ModelLoadError(f"model repository {repository} is not a folder")
    return sorted(p for p in repository.iterdir() if (p / MODEL_FILE).is_file())


def read_config(directory: Path, defaults: BatchingSettings) -> ModelConfig:
    """Parse and validate an unversioned ``directory/model.yaml``, batching from ``defaults``."""
    path = directory / MODEL_FILE
    raw = _read_yaml(path)
    raw.setdefault("name", directory.name)
    return settle(validate_file(raw, path, directory), defaults)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc.strerror}") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: must be a mapping of settings")
    return raw


def validate_file(raw: dict[str, Any], path: Path, directory: Path) -> ModelFile:
    """``raw`` as a :class:`ModelFile`; errors name ``path`` and every wrong key."""
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
    return config


def runs_on_cuda(device: str, cuda_available: bool | None = None) -> bool:
    """Whether ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``) means a GPU on this machine."""
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    if cuda_available is None:
        cuda_available = cuda_present()
    return cuda_available


def cuda_present() -> bool:
    """Whether this machine has a usable CUDA device: torch's answer, or ONNX Runtime's without torch."""
    try:
        import torch
    except ImportError:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return bool(torch.cuda.is_available())


def settle(config: ModelFile, defaults: BatchingSettings, cuda_available: bool | None = None) -> ModelConfig:
    """The resolved configuration: on CUDA the file's ``cuda`` section replaces its CPU values;
    batching keys still left out take the server's defaults."""
    if config.cuda is not None and runs_on_cuda(config.device, cuda_available):
        config = config.model_copy(update=config.cuda.model_dump(exclude_none=True))
    settled = config.model_dump(exclude_unset=True, exclude={"version_policy", "traffic", "shadow", "cuda"})
    settled["max_batch_size"] = config.max_batch_size or defaults.max_batch_size
    settled["max_batch_delay_ms"] = (
        defaults.max_batch_delay_ms if config.max_batch_delay_ms is None else config.max_batch_delay_ms
    )
    settled["max_queue_size"] = config.max_queue_size or defaults.max_queue_size
    settled["batch_delay"] = config.batch_delay or defaults.batch_delay
    settled["admission"] = config.admission or defaults.admission
    return ModelConfig.model_validate(settled)


def resolve_handler(
    directory: Path,
    handler: str,
    backend: str = "torch",
    *,
    shared: Path | None = None,
    module_name: str | None = None,
) -> HandlerClass:
    """A built-in handler by name, or ``model.py[:Class]`` from the folder; contract checked.

    With ``backend: onnx`` a built-in name only names the model family: the exported graph
    carries the architecture, so every built-in runs as :class:`OnnxImageModel` (or the family's
    own ONNX handler, which converts its checkpoint at load). A custom
    ``model.py`` class is the user's own and is returned whatever the backend. A version's
    folder may carry its own ``model.py``; else the model folder's (``shared``) is used.
    """
    if handler in BUILTIN_HANDLERS:
        return builtin_handlers(handler, backend)[0]
    file_name, _, class_name = handler.partition(":")
    if not file_name.endswith(".py"):
        known = ", ".join(sorted(BUILTIN_HANDLERS))
        raise ModelLoadError(
            f"{directory}: unknown handler {handler!r}; use one of {known} or 'model.py:ClassName'"
        )
    source = directory / file_name
    if not source.is_file() and shared is not None and (shared / file_name).is_file():
        source = shared / file_name
    module = _import_file(directory, source, module_name or directory.name)
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


def builtin_handlers(handler: str, backend: str) -> tuple[HandlerClass, HandlerClass | None]:
    """The class serving built-in ``handler`` on ``backend``, and the one to fall back to.

    ``auto`` prefers the family's ONNX Runtime handler and falls back to torch; families without
    one run on torch. A torch handler whose packages are not installed is replaced by a stand-in
    that names the extra (see :func:`_needs_extra`), so the other models still serve.
    """
    if backend == "onnx":
        return _import_handler(ONNX_HANDLERS.get(handler, BUILTIN_HANDLERS["onnx"])), None
    torch_class = _import_handler(BUILTIN_HANDLERS[handler])
    if backend == "auto" and handler in ONNX_HANDLERS:
        fallback = None if issubclass(torch_class, ExtraMissing) else torch_class
        return _import_handler(ONNX_HANDLERS[handler]), fallback
    return torch_class, None


def _import_handler(target: str) -> HandlerClass:
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in TORCH_MODULES:
            raise
        reason = f"{class_name} needs {missing}, which is not installed: {TORCH_EXTRA}"
        return _needs_extra(class_name, reason)
    cls: HandlerClass = getattr(module, class_name)
    return cls


class ExtraMissing(ModelHandler[Any, Any]):
    """Stands in for a built-in handler whose packages are not installed.

    It reports the reason as missing weights, so the default served set leaves the model out
    with that reason in the log, and a model named explicitly fails to load with it.
    """

    reason = ""

    @classmethod
    def weights_missing(cls, config: ModelConfig, model_dir: Path) -> str | None:
        return cls.reason

    def load(self, device: str) -> None:
        raise ModelLoadError(self.reason)

    def preprocess(self, image: Any) -> Any:
        raise ModelLoadError(self.reason)

    def predict(self, items: Any) -> Any:
        raise ModelLoadError(self.reason)

    def postprocess(self, output: Any, *, top_k: int) -> dict[str, Any]:
        raise ModelLoadError(self.reason)


def _needs_extra(name: str, reason: str) -> HandlerClass:
    return type(name, (ExtraMissing,), {"reason": reason, "__module__": __name__})


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


def _import_file(directory: Path, path: Path, name: str) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"{directory}: handler file {path.name} does not exist")
    module_name = f"inference_engine_user_models.{name}"
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
    """Validate every selected model folder, one spec per served version; broken ones are
    returned, not raised."""
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
    for _, directory in sorted(folders.items()):
        found, failed = scan_model(directory, defaults)
        specs.extend(found)
        broken.extend(failed)
    return specs, broken


def scan_model(directory: Path, defaults: BatchingSettings) -> tuple[list[ModelSpec], list[BrokenModel]]:
    """One model folder: a spec per version its policy serves, or why each cannot be served.

    A problem with the shared ``model.yaml`` (or the traffic it asks for) breaks the whole
    model: one :class:`BrokenModel` without a version. A problem in one version's folder
    breaks only that version.
    """
    path = directory / MODEL_FILE
    try:
        raw = _read_yaml(path)
        raw.setdefault("name", directory.name)
        shared = validate_file(raw, path, directory)
        folders = version_folders(directory)
        if not folders:
            config = settle(shared, defaults)
            plan = ServingPlan.build(shared, [config.version], path)
            return [_spec(directory, config, plan)], []
        if "version" in raw:
            raise ModelLoadError(
                f"{path}: version: this model has numbered version folders; each version is its folder's name"
            )
        chosen = shared.version_policy.select(list(folders))
        if not chosen:
            found = ", ".join(str(v) for v in sorted(folders))
            raise ModelLoadError(
                f"{path}: version_policy ({shared.version_policy.describe()}) selects none of the "
                f"version folders ({found})"
            )
        plan = ServingPlan.build(shared, [str(v) for v in chosen], path)
    except ModelLoadError as exc:
        return [], [BrokenModel(directory.name, directory, str(exc))]
    specs: list[ModelSpec] = []
    broken: list[BrokenModel] = []
    for number in chosen:
        folder = folders[number]
        try:
            own_path = folder / MODEL_FILE
            own = _read_yaml(own_path) if own_path.is_file() else {}
            check_version_file(own_path, own)
            merged = merged_settings(raw, own, number)
            config = settle(validate_file(merged, own_path if own else path, directory), defaults)
            specs.append(_spec(folder, config, plan, shared=directory))
        except ModelLoadError as exc:
            broken.append(BrokenModel(directory.name, folder, str(exc), version=str(number), plan=plan))
    return specs, broken


def _spec(directory: Path, config: ModelConfig, plan: ServingPlan, shared: Path | None = None) -> ModelSpec:
    module = config.name if shared is None else f"{config.name}.v{config.version}"
    handler_class = resolve_handler(
        directory, config.handler, config.backend, shared=shared, module_name=module
    )
    fallback = None
    if config.handler in BUILTIN_HANDLERS:
        fallback = builtin_handlers(config.handler, config.backend)[1]
    return ModelSpec(directory, config, handler_class, plan, fallback)
