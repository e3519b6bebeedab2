"""``inference-engine export``: turn a torch-backed model folder into an ONNX model folder.

Why: ONNX Runtime runs the same network faster than torch eager on a CPU (docs/PERFORMANCE.md
has the figures), and an ONNX folder serves without the model's Python code.
The export is only worth having if it answers like the original, so it is verified before it
is kept: the new folder is built beside the target under a temporary name, loaded by the ONNX
backend exactly as ``serve`` would load it, fed the same pre-processed images as the torch
network, and only renamed into place when the largest absolute difference of the raw outputs
is within the tolerance. A failed export leaves nothing behind that a server could pick up.

A handler opts in by implementing :class:`OnnxExportable`.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np
import numpy.typing as npt
import yaml
from PIL import Image
from pydantic import ValidationError

from inference_engine.errors import ModelLoadError
from inference_engine.models.base import ModelConfig, ModelHandler

if TYPE_CHECKING:
    import torch

ExportOutput = Literal["logits", "probabilities", "embedding"]

DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-3
EXPORT_PACKAGES = ("onnx", "onnxscript")
ONNX_FILE = "model.onnx"
# Serving settings copied to the exported model.yaml only when the source sets them, so that
# the global batching defaults keep applying where they applied before.
_COPIED_IF_SET = ("max_batch_size", "max_batch_delay_ms", "max_queue_size", "batch_delay", "intra_op_threads")


@runtime_checkable
class OnnxExportable(Protocol):
    """A handler whose network the exporter can trace (``TorchImageClassifier`` and CLIP's).

    ``onnx_export()`` is called once, after ``load("cpu")`` with ``dtype: float32``, and returns
    ``(module, output)``:

    * ``module``: a ``torch.nn.Module`` (or TorchScript module) on the CPU, in float32 and eval
      mode, whose ``forward`` takes exactly what the handler's ``preprocess`` returns, stacked
      into one batch (``[N, 3, crop, crop]``, or ``[N, crop, crop, 3]`` with ``layout: nhwc``),
      and returns one tensor ``[N, width]``. No pre-processing inside: the ONNX folder keeps the
      same ``preprocessing`` section, applied by the server before the graph.
    * ``output``: what that tensor is, which becomes the ONNX folder's ``options.output``:
      ``"logits"`` (the server applies softmax), ``"probabilities"`` (answered as is) or
      ``"embedding"`` (the server L2-normalises it; e.g. CLIP's projected image features, so
      the exported folder answers ``embed_image``).

    The exporter traces ``module`` with a dynamic batch axis, so ``forward`` must not branch on
    the batch size. The exported folder takes its ``preprocessing`` from ``self.config`` after
    ``load``, so a handler that works out its pre-processing at load time (CLIP, from
    ``preprocessor_config.json``) must store it there.
    """

    def onnx_export(self) -> tuple[torch.nn.Module, ExportOutput]:
        """The network to export and what its output holds."""
        ...


class ExportError(Exception):
    """The export could not be done or did not verify; ``exit_code`` follows the CLI's convention."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ExportReport:
    """What was written and how closely it matches the torch network."""

    source: Path
    output: Path
    output_kind: ExportOutput
    opset: int
    inputs: int
    max_abs_diff: float | None  # None when the check was skipped
    tolerance: float
    seconds: float


def require_export_packages() -> None:
    """Fail early and clearly when the optional exporter dependencies are missing."""
    missing = [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"ONNX export needs {' and '.join(EXPORT_PACKAGES)} (missing: {', '.join(missing)}); "
            "install them with: pip install 'inference-engine[export]'"
        )


def synthetic_images(side: int) -> list[Image.Image]:
    """Deterministic images with structure at several scales: a gradient, noise, colour blocks.

    They exercise every channel and a wide range of activations, so a wrong op shows up in the
    parity check even without real photos (pass those with ``--sample``).
    """
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    gradient = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), axis=-1)
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3))
    blocks = np.kron(
        np.random.default_rng(1).integers(0, 256, (8, 8, 3)), np.ones((side // 8 + 1,) * 2 + (1,))
    )
    return [Image.fromarray(a[:side, :side].astype(np.uint8)) for a in (gradient, noise, blocks)]


def _open_sample(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ExportError(f"sample image {path} cannot be read: {exc}", exit_code=2) from None


def export_onnx(
    model_dir: Path,
    output: Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    samples: Sequence[Path] = (),
    force: bool = False,
) -> ExportReport:
    """Export ``model_dir``'s network to ``output`` (default: sibling ``<name>_onnx``) and verify it.

    Raises :class:`ExportError` (or :class:`ModelLoadError` for a broken source folder); on any
    failure ``output`` is left as it was.
    """
    from inference_engine.models.loader import read_config
    from inference_engine.settings import BatchingSettings

    started = time.monotonic()
    require_export_packages()
    model_dir = model_dir.resolve()
    config = read_config(model_dir, BatchingSettings())
    if config.backend == "onnx" or config.handler == "onnx":
        raise ExportError(f"{model_dir} is already an ONNX model (backend: onnx)", exit_code=2)
    output = (output or model_dir.parent / f"{model_dir.name}_onnx").resolve()
    if output == model_dir:
        raise ExportError("--output must differ from the model folder", exit_code=2)
    if output.exists() and not force:
        raise ExportError(f"{output} already exists; pass --force to replace it", exit_code=2)
    photos = [_open_sample(p) for p in samples]

    handler, module, kind = _load_torch_handler(model_dir, config)
    images = photos + synthetic_images(handler.config.preprocessing.resize)
    batch = np.stack([handler.preprocess(image) for image in images])
    diff: float | None = None

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would survive the rename and hide the model from a server user
    try:
        _trace(module, batch[:2], staging / ONNX_FILE, opset)
        onnx_config = _write_folder(staging, output.name, config, handler, kind, model_dir, opset)
        diff = _verify(module, batch, staging, onnx_config) if check else None
        if diff is not None and not diff <= tolerance:
            raise ExportError(
                f"parity check failed: max |torch - onnx| = {diff:.3g} on {len(batch)} inputs exceeds "
                f"the tolerance {tolerance:g}; nothing was written (raise --tolerance if this is expected)"
            )
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
        handler.unload()
    return ExportReport(
        source=model_dir,
        output=output,
        output_kind=kind,
        opset=opset,
        inputs=len(batch),
        max_abs_diff=diff,
        tolerance=tolerance,
        seconds=time.monotonic() - started,
    )


def _load_torch_handler(
    model_dir: Path, config: ModelConfig
) -> tuple[ModelHandler[Any, Any], torch.nn.Module, ExportOutput]:
    """The folder's torch handler, loaded on the CPU in float32 (what tracing needs), and its network."""
    from inference_engine.models.loader import resolve_handler

    cls = resolve_handler(model_dir, config.handler, "torch")
    handler = cls(config.model_copy(update={"device": "cpu", "dtype": "float32"}), model_dir)
    if not isinstance(handler, OnnxExportable):
        raise ExportError(
            f"handler {config.handler!r} ({cls.__name__}) cannot be exported: it has no onnx_export() "
            "method (see inference_engine.export.OnnxExportable)",
            exit_code=2,
        )
    handler.load("cpu")
    module, kind = handler.onnx_export()
    if kind not in get_args(ExportOutput):
        handler.unload()
        raise ExportError(
            f"{cls.__name__}.onnx_export() returned output {kind!r}; expected one of "
            f"{', '.join(get_args(ExportOutput))}"
        )
    return handler, module, kind


def _trace(module: torch.nn.Module, example: npt.NDArray[Any], path: Path, opset: int) -> None:
    """``torch.onnx.export`` (TorchScript-based, dynamic batch axis), its chatter silenced."""
    import torch

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # deprecation of this exporter, constant-folding notes
            torch.onnx.export(
                module,
                (torch.from_numpy(example),),
                str(path),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed (opset {opset}): {type(exc).__name__}: {exc}") from None


def _write_folder(
    folder: Path,
    name: str,
    config: ModelConfig,
    handler: ModelHandler[Any, Any],
    kind: ExportOutput,
    source: Path,
    opset: int,
) -> ModelConfig:
    """``model.yaml`` (and ``labels.txt``) for the exported graph; returns the validated config.

    The pre-processing is the loaded handler's (``handler.config``), which is what the traced
    network was fed: a handler may derive it at load (CLIP reads ``preprocessor_config.json``).
    """
    from inference_engine.models.loader import BUILTIN_HANDLERS

    raw = yaml.safe_load((source / "model.yaml").read_text(encoding="utf-8"))
    labels: str | list[str] | None = None if kind == "embedding" else config.labels
    if isinstance(labels, str) and labels != "imagenet":
        labels = "labels.txt"
        (folder / labels).write_text("".join(f"{label}\n" for label in handler.labels()), encoding="utf-8")
    document: dict[str, Any] = {
        "name": name,
        "version": config.version,
        "handler": config.handler if config.handler in BUILTIN_HANDLERS else "onnx",
        "backend": "onnx",
        "weights": ONNX_FILE,
        "device": config.device,
        "dtype": "float32",
        "labels": labels,
        "top_k": config.top_k,
        **{k: raw[k] for k in _COPIED_IF_SET if raw.get(k) is not None},
        "instances": config.instances,
        "preprocessing": handler.config.preprocessing.model_dump(mode="json"),
        "options": {"output": kind},
    }
    try:
        onnx_config = ModelConfig.model_validate(document)
    except ValidationError as exc:
        raise ExportError(
            f"cannot name the exported model {name!r}: {exc.errors()[0]['msg']}", exit_code=2
        ) from None
    header = (
        f"# Exported from {source} by `inference-engine export` (opset {opset}).\n"
        "# Same pre-processing, labels and batching as the torch model; see docs/model-repository.md.\n"
    )
    text = header + yaml.safe_dump(document, sort_keys=False, default_flow_style=None)
    (folder / "model.yaml").write_text(text, encoding="utf-8")
    return onnx_config


def _verify(module: torch.nn.Module, batch: npt.NDArray[Any], folder: Path, config: ModelConfig) -> float:
    """Check the graph, load it as ``serve`` would, and return max |torch - onnx| on ``batch``."""
    import onnx
    import torch

    from inference_engine.models.onnx_backend import OnnxImageModel

    try:
        onnx.checker.check_model(str(folder / ONNX_FILE), full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported graph does not pass onnx.checker: {exc}") from None
    served = OnnxImageModel(config, folder)
    try:
        served.load("cpu")
    except ModelLoadError as exc:
        raise ExportError(f"the exported folder does not load on the ONNX backend: {exc}") from None
    with torch.no_grad():
        expected = module(torch.from_numpy(batch)).float().numpy().reshape(len(batch), -1)
    actual = served.forward(batch)
    served.unload()
    return float(np.max(np.abs(expected - actual)))


# -- command line (wired into ``inference-engine export`` by cli.py) ----------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``export`` sub-command's flags."""
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="a torch-backed model folder")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default onnx)")
    parser.add_argument("--output", type=Path, help="folder to write (default: sibling <name>_onnx)")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run onnx.checker and the parity check against torch (default: on)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"largest max |torch - onnx| of the raw outputs accepted (default {DEFAULT_TOLERANCE:g})",
    )
    parser.add_argument(
        "--sample",
        type=Path,
        action="append",
        default=[],
        metavar="IMAGE",
        help="a real image to include in the parity check (repeatable)",
    )
    parser.add_argument("--force", action="store_true", help="replace --output if it exists")


def run(args: argparse.Namespace) -> int:
    """``inference-engine export``: 0 exported and verified, 1 failed or not verified, 2 bad usage."""
    if args.tolerance < 0:
        print("inference-engine export: --tolerance must be >= 0", file=sys.stderr)
        return 2
    try:
        report = export_onnx(
            args.model_dir,
            args.output,
            opset=args.opset,
            check=args.check,
            tolerance=args.tolerance,
            samples=args.sample,
            force=args.force,
        )
    except ExportError as exc:
        print(f"inference-engine export: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModelLoadError as exc:
        print(f"inference-engine export: {exc}", file=sys.stderr)
        return 2
    print(f"exported {report.source} -> {report.output} (opset {report.opset}, output {report.output_kind})")
    if report.max_abs_diff is None:
        print("not verified (--no-check)")
    else:
        print(
            f"parity on {report.inputs} inputs: max |torch - onnx| = {report.max_abs_diff:.3g} "
            f"(tolerance {report.tolerance:g}): ok"
        )
    print(f"done in {report.seconds:.1f}s; serve it from {report.output.parent}")
    return 0
