"""What the suite measures: the bench images and the model folders, built offline and cached.

Images are real photographs from scikit-image, so JPEG entropy decoding costs what it costs on
real uploads:

* ``photos640``: eight 640x480 JPEGs (quality 90), the typical upload size.
* ``photos12mp``: four 4000x3000 JPEGs (a phone camera's 12 MP), upscaled from the largest
  scikit-image photos with seeded sensor-like grain so they compress (and decode) like real
  camera files, about 3-4 MB each. Decoding dominates here.
* ``variants500``: 500 distinct 640x480 JPEGs (quality 90) cut from the eight photos by seeded
  random crops, flips and resizes, so that no two have the same pixels after any model's
  pre-processing. The ``@cache`` workloads send them in a Zipf mix (:func:`zipf_sequence`):
  a few images often, most rarely, as real traffic repeats popular photos.
* ``stripes640`` (:class:`StripedRequests`, not an :func:`image_set`: built on demand): as many
  distinct 640x480 JPEGs as a run needs, each spliced from the eight photos' restart intervals
  (one per 16-pixel row of blocks, re-using the entropy-coded bytes, so no encoding per image),
  a photo chosen per row. Every index gives other pixels and the same decoding cost as
  ``photos640``: a run in which no image repeats, so every output-cache lookup misses.

Models (weights cached under ``--cache``, a fresh repository written for each server start so
that a run can override ``model.yaml`` keys):

* ``tiny_cnn``: a few-thousand-parameter TorchScript CNN on 56x56 inputs; serving overhead
  and decoding dominate.
* ``efficientnet_lite0``: the shipped default model (ImageNet weights; ``backend: auto``: its
  torch checkpoint converted to ONNX at load and served on ONNX Runtime).
* ``efficientnet_lite0_torch``: the same model with ``backend: torch`` (torch eager, traced).
* ``efficientnet_lite0_onnx``: the same network exported with ``inference-engine export``,
  on ONNX Runtime.
* ``clip_vit_b32``: a Hugging Face ``CLIPModel(CLIPConfig())`` with random weights. The default
  ``CLIPVisionConfig`` *is* ViT-B/32 (224 px, patch 32, 12 layers, width 768), so the image
  tower does exactly the real model's arithmetic. The text tower (63M parameters) comes along
  because the ``clip`` handler loads a whole ``CLIPModel``; it costs memory, not image-request
  time: three labels are embedded once at load so ``/predict`` ranks them.
* ``tiny_cnn_paced``: the tiny CNN (same weights and pre-processing, the TorchScript handler)
  with each forward pass padded by a sleep to ``pass_fixed_ms + pass_per_item_ms x batch`` (2 ms
  a pass and 4 ms an input: about 235 inputs/s at batch 8), through ``bench/paced_model.py``
  copied into its folder as ``model.py``. The model, not decoding or HTTP, is then the
  bottleneck, at a capacity that does not depend on what else the cores do (a sleep, not CPU):
  what fair queuing and predictive admission act on (:mod:`bench.fairness`,
  :mod:`bench.admission`). The plain tiny CNN's forward pass runs at 50,000 inputs/s, so its
  queue never holds more than the batch being formed.

A shadow workload's repository holds its model as two identical versions, ``<name>/1/`` and
``<name>/2/``, under one shared ``model.yaml`` with :data:`SHADOW_OVERRIDES`: callers are
answered by version 1 and every request is copied to version 2 in the background.

Requests (:func:`request_set`, built once per run, so the load generator only writes bytes):

* ``native``: each JPEG posted as it is to the model's route (``/predict``).
* ``v2``: Open Inference Protocol V2 JSON to ``/v2/models/{name}/infer``: each image already
  pre-processed the model's way, sent as one ``pixel_values`` ``FP32`` ``[1, 3, crop, crop]``
  tensor of JSON numbers, flat in row-major order as ``tritonclient`` sends a tensor without the
  binary extension. The server parses and checks about 90 KB (tiny CNN) to 1.4 MB (EfficientNet)
  of JSON per request on its event loop instead of decoding a JPEG in its pool.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from PIL import Image

from bench.load import post_head

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "inference-engine-bench"

SMALL_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "stereo_motorcycle",
)
LARGE_PHOTOS = ("stereo_motorcycle", "hubble_deep_field", "retina", "coffee")


def _photo(name: str) -> Image.Image:
    from skimage import data

    array = getattr(data, name)()
    if isinstance(array, tuple):  # stereo pairs: the left image
        array = array[0]
    return Image.fromarray(np.asarray(array)[..., :3]).convert("RGB")


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Centre-crop to the target aspect ratio, then resize (a photo, not a stretched one)."""
    target = width / height
    w, h = image.size
    if w / h > target:
        crop = round(h * target)
        image = image.crop(((w - crop) // 2, 0, (w - crop) // 2 + crop, h))
    else:
        crop = round(w / target)
        image = image.crop((0, (h - crop) // 2, w, (h - crop) // 2 + crop))
    return image.resize((width, height), Image.Resampling.BICUBIC)


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@cache
def image_set(name: str) -> tuple[bytes, ...]:
    """The encoded JPEGs of one image set (deterministic: same bytes on every run)."""
    if name == "photos640":
        return tuple(_jpeg(_fit(_photo(p), 640, 480)) for p in SMALL_PHOTOS)
    if name == "photos12mp":
        rng = np.random.default_rng(0)
        out = []
        for photo in LARGE_PHOTOS:
            big = np.asarray(_fit(_photo(photo), 4000, 3000), dtype=np.int16)
            grain = rng.normal(0.0, 4.0, big.shape[:2])[..., None]  # luminance grain, as a sensor's
            out.append(_jpeg(Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8))))
        return tuple(out)
    if name == VARIANTS:
        return variants(VARIANT_COUNT)
    raise KeyError(f"unknown image set {name!r} ({', '.join(IMAGE_SETS)})")


#: The ``@cache`` workloads' image set: 500 distinct crops of the photos, sent in a Zipf mix.
VARIANTS = "variants500"
VARIANT_COUNT = 500
IMAGE_SETS = ("photos640", "photos12mp", VARIANTS)


def variants(count: int, seed: int = 0) -> tuple[bytes, ...]:
    """``count`` distinct 640x480 JPEGs (quality 90): image ``k`` is a seeded random crop of photo
    ``k mod 8`` (55-100% of each side, anywhere in it), centre-fitted to 640x480 and flipped
    left-right for about half of them. Deterministic: the same bytes on every run."""
    rng = np.random.default_rng(seed)
    photos = [_photo(p) for p in SMALL_PHOTOS]
    out = []
    for index in range(count):
        photo = photos[index % len(photos)]
        w, h = photo.size
        cw, ch = (max(8, round(side * rng.uniform(0.55, 1.0))) for side in (w, h))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = _fit(photo.crop((left, top, left + cw, top + ch)), 640, 480)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(_jpeg(image))
    return tuple(out)


#: Zipf exponent, sequence length and seed of the ``@cache`` workloads' request mix.
ZIPF_S = 1.1
ZIPF_LENGTH = 1 << 17
ZIPF_SEED = 0


def zipf_sequence(
    count: int, length: int = ZIPF_LENGTH, s: float = ZIPF_S, seed: int = ZIPF_SEED
) -> list[int]:
    """``length`` image indices in ``[0, count)`` drawn independently with Zipf popularity: the
    image of rank ``r`` (1 = most popular) has probability ``r**-s`` / ``sum(k**-s)``, the ranks
    assigned to the images in a seeded random order. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, count + 1, dtype=np.float64) ** -s
    by_rank = rng.permutation(count)  # the image of each popularity rank
    ranks = rng.choice(count, size=length, p=weights / weights.sum())
    return [int(i) for i in by_rank[ranks]]


def zipf_expected_hit_ratio(sequence: list[int]) -> float:
    """The hit ratio an unbounded cache, empty at the start, would have over ``sequence``: every
    request but the first of each image is a hit."""
    return 1.0 - len(set(sequence)) / len(sequence) if sequence else float("nan")


# -- distinct images on demand: photos640 spliced at their restart markers ----------------------------

#: Rows of 8x8 blocks per restart interval; a 640x480 4:2:0 JPEG has 30 rows of 16-pixel MCUs.
_STRIPE_ROWS = 30
#: The rows whose photo spells an image's index in base 8, centre out: inside every model's
#: centre crop (rows 11-18 are pixels 176-304 of 480), so different indices differ in the pixels
#: a model sees. 8 digits: 16.7 million distinct images.
_INDEX_ROWS = (15, 14, 16, 13, 17, 12, 18, 11)
STRIPES_COUNT = 8 ** len(_INDEX_ROWS)


@cache
def _stripe_parts() -> tuple[bytes, tuple[tuple[bytes, ...], ...]]:
    """The header every photos640 image shares when re-encoded with a restart marker per MCU row
    (same size, quality, subsampling, hence the same quantisation and Huffman tables), and per
    photo its rows: each row's entropy-coded segment followed by the marker that ends it (the
    last by the end-of-image marker), ready to be joined."""
    rows = []
    header = b""
    for data in image_set("photos640"):
        with Image.open(io.BytesIO(data)) as image:
            encoded = io.BytesIO()
            image.convert("RGB").save(encoded, "JPEG", quality=90, restart_marker_rows=1)
        head, parts = _split_restart_intervals(encoded.getvalue())
        if header and head != header:
            raise RuntimeError("the photos' JPEG headers differ: they cannot be spliced")
        if len(parts) != _STRIPE_ROWS:
            raise RuntimeError(f"expected {_STRIPE_ROWS} restart intervals, found {len(parts)}")
        header = head
        ends = [bytes((0xFF, 0xD0 + row % 8)) for row in range(_STRIPE_ROWS - 1)] + [b"\xff\xd9"]
        rows.append(tuple(part + end for part, end in zip(parts, ends, strict=True)))
    return header, tuple(rows)


def _split_restart_intervals(data: bytes) -> tuple[bytes, list[bytes]]:
    """A baseline JPEG as its header (through the start-of-scan segment) and the entropy-coded
    segments between its restart markers (``FFD0``-``FFD7``; ``FF00`` is a stuffed byte)."""
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    body = data[start : data.rindex(b"\xff\xd9")]
    parts, last, at = [], 0, body.find(b"\xff")
    while at >= 0:
        if 0xD0 <= body[at + 1] <= 0xD7:
            parts.append(body[last:at])
            last = at + 2
        at = body.find(b"\xff", at + 2)
    parts.append(body[last:])
    return data[:start], parts


def _striped_parts(index: int) -> list[bytes]:
    """The byte strings that make up :func:`striped_jpeg` ``index``, in order."""
    if not 0 <= index < STRIPES_COUNT:
        raise IndexError(index)
    header, photos = _stripe_parts()
    choice = [((index * 2654435761 + row * 40503) >> 7) % 8 for row in range(_STRIPE_ROWS)]
    for position, row in enumerate(_INDEX_ROWS):
        choice[row] = (index >> (3 * position)) & 7
    return [header, *(photos[photo][row] for row, photo in enumerate(choice))]


def striped_jpeg(index: int) -> bytes:
    """Distinct image ``index`` (``0 <= index < STRIPES_COUNT``): for each 16-pixel row, that row of
    one of the eight photos. The rows of :data:`_INDEX_ROWS` spell ``index`` in base 8; the
    others are a hash of it (so that images differ all over, as photos do)."""
    return b"".join(_striped_parts(index))


class StripedRequests(Sequence[bytes]):
    """HTTP requests posting :func:`striped_jpeg` images ``first``, ``first + 1``, ... to ``path``,
    each built when asked for (about 15 µs of the load generator's time): a closed loop with
    disjoint client streams (``load.closed_loop(..., disjoint=True)``) never sends one image twice."""

    def __init__(self, path: str, port: int, first: int = 0, headers: dict[str, str] | None = None) -> None:
        self.path, self.port, self.first, self.headers = path, port, first, headers
        _stripe_parts()  # built now, not in the first request's time

    def __len__(self) -> int:
        return STRIPES_COUNT - self.first

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        parts = _striped_parts(self.first + index)
        head = post_head(self.path, sum(map(len, parts)), self.port, headers=self.headers)
        return b"".join([head, *parts])


ApiProtocol = Literal["native", "v2"]


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: how to build its folder and what ``model.yaml`` says."""

    name: str
    description: str
    config: dict[str, Any]
    weights_kind: str  # "tiny_cnn", "packaged", "onnx", "clip"
    path: str = "/predict"  # the route the load generator posts to
    settings_env: dict[str, str] = field(default_factory=dict)  # IE_* variables for the server
    model_py: Path | None = None  # a custom handler, copied into the model folder as model.py

    def model_yaml(self, weights: Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        document = copy.deepcopy(self.config)
        if weights is not None:
            document["weights"] = str(weights)
        for key, value in (overrides or {}).items():
            if isinstance(value, dict) and isinstance(document.get(key), dict):
                document[key] = {**document[key], **value}
            else:
                document[key] = value
        return {"name": self.name, **document}


def _shipped_effnet() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(
        (ROOT / "models" / "efficientnet_lite0" / "model.yaml").read_text()
    )
    config.pop("name")
    return config


def model_specs() -> dict[str, ModelSpec]:
    """Every benchmarked model, by name; their ``model.yaml`` is what the suite serves by default."""
    effnet = _shipped_effnet()
    # ONNX Runtime keeps its per-image speed up to batch 8-16 where torch eager slows past 4: 8
    # served the most at 32 clients (docs/PERFORMANCE.md, lever max_batch_onnx).
    onnx_config = {**effnet, "backend": "onnx", "options": {"output": "logits"}, "max_batch_size": 8}
    return {
        "tiny_cnn": ModelSpec(
            "tiny_cnn",
            "TorchScript CNN, 56x56 input, ~300 parameters: serving overhead and decoding dominate",
            {
                "handler": "torchscript",
                "labels": ["alpha", "beta", "gamma", "delta"],
                "preprocessing": {"resize": 64, "crop": 56},
                "max_batch_size": 32,
                # One intra-op thread: two made served throughput 1.5-2.6x worse (docs/PERFORMANCE.md).
                "intra_op_threads": 1,
            },
            "tiny_cnn",
        ),
        "tiny_cnn_paced": ModelSpec(
            "tiny_cnn_paced",
            "the tiny CNN with each forward pass padded (a sleep) to 2 ms + 4 ms an input: the model "
            "is the bottleneck, at ~235 inputs/s at batch 8 whatever else runs",
            {
                "handler": "model.py:PacedTinyCNN",
                "labels": ["alpha", "beta", "gamma", "delta"],
                "preprocessing": {"resize": 64, "crop": 56},
                "max_batch_size": 8,
                "intra_op_threads": 1,
                "options": {"pass_fixed_ms": 2.0, "pass_per_item_ms": 4.0},
            },
            "tiny_cnn",
            model_py=ROOT / "bench" / "paced_model.py",
        ),
        "efficientnet_lite0": ModelSpec(
            "efficientnet_lite0",
            "EfficientNet-Lite0 as shipped: its checkpoint converted at load, on ONNX Runtime",
            effnet,
            "packaged",
        ),
        "efficientnet_lite0_torch": ModelSpec(
            "efficientnet_lite0_torch",
            "EfficientNet-Lite0 with backend: torch (the default before the converter)",
            {**effnet, "backend": "torch", "max_batch_size": 4},
            "packaged",
        ),
        "efficientnet_lite0_onnx": ModelSpec(
            "efficientnet_lite0_onnx",
            "EfficientNet-Lite0 exported to ONNX, on ONNX Runtime",
            onnx_config,
            "onnx",
        ),
        "clip_vit_b32": ModelSpec(
            "clip_vit_b32",
            "CLIP ViT-B/32 image tower (random weights, real architecture), zero-shot over 3 labels",
            {
                "handler": "clip",
                "labels": ["cat", "dog", "car"],
                "options": {"templates": ["a photo of a {}."]},
                "max_batch_size": 8,
            },
            "clip",
        ),
    }


# -- weights, built once and cached -----------------------------------------------------------


def _tiny_cnn(cache_dir: Path) -> Path:
    path = cache_dir / "tiny_cnn.pt"
    if path.is_file():
        return path
    import torch

    class TinyCNN(torch.nn.Module):
        """Conv 3->8 stride 2, ReLU, global pool, linear 8->4 (the tests' tiny classifier)."""

        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)
            )
            self.head = torch.nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x).flatten(1))

    torch.manual_seed(0)
    tmp = path.with_suffix(".tmp")
    torch.jit.save(torch.jit.script(TinyCNN().eval()), str(tmp))
    tmp.rename(path)
    return path


def _onnx(cache_dir: Path) -> Path:
    folder = cache_dir / "efficientnet_lite0_onnx"
    onnx = folder / "model.onnx"
    if onnx.is_file():
        return onnx
    if folder.exists():
        shutil.rmtree(folder)
    command = [
        sys.executable,
        "-m",
        "inference_engine",
        "export",
        str(ROOT / "models" / "efficientnet_lite0"),
        "--format",
        "onnx",
        "--output",
        str(folder),
    ]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return onnx


def _clip(cache_dir: Path) -> Path:
    folder = cache_dir / "clip_vit_b32"
    if (folder / "preprocessor_config.json").is_file():
        return folder
    import torch
    from transformers import CLIPConfig, CLIPModel

    sys.path.insert(0, str(ROOT))
    from tests.hf_models import clip_tokenizer, preprocessor_config  # offline tokenizer, processor file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(CLIPConfig()).eval()  # default vision config = ViT-B/32
    model.save_pretrained(str(tmp))
    clip_tokenizer().save_pretrained(str(tmp))
    preprocessor_config(tmp, {"shortest_edge": 224}, "CLIPImageProcessor", side=224)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def weights_for(spec: ModelSpec, cache_dir: Path) -> Path | None:
    """Build (first time) and return the cached weights of ``spec``; ``None`` for packaged weights."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    builders = {"tiny_cnn": _tiny_cnn, "onnx": _onnx, "clip": _clip}
    if spec.weights_kind == "packaged":
        return None
    return builders[spec.weights_kind](cache_dir)


#: What a shadow workload's shared ``model.yaml`` adds: versions 1 and 2 served, every routed
#: request answered by 1 and copied to 2 in the background (:mod:`inference_engine.shadow`).
SHADOW_OVERRIDES: dict[str, Any] = {"version_policy": "all", "traffic": {"1": 100}, "shadow": {"2": 100}}


def write_repository(
    spec: ModelSpec,
    cache_dir: Path,
    target: Path,
    overrides: dict[str, Any] | None = None,
    versions: tuple[int, ...] = (),
    weights: Path | None = None,
) -> Path:
    """A one-model repository at ``target`` serving ``spec`` with ``overrides`` on its ``model.yaml``.

    With ``versions``, the model in Triton's layout: an empty ``<name>/<N>/`` folder per version
    under the one shared ``model.yaml`` (its ``weights`` an absolute path into the cache, or the
    packaged weights), so every version is the same model with the same weights. ``weights``:
    serve that file or folder instead of the spec's (built in the cache only when not given).
    """
    folder = target / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    document = spec.model_yaml(weights or weights_for(spec, cache_dir), overrides)
    if versions:
        document.pop("version", None)  # a version's number is its folder's name
        for number in versions:
            (folder / str(number)).mkdir(exist_ok=True)
    (folder / "model.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    if spec.model_py is not None:
        shutil.copyfile(spec.model_py, folder / "model.py")
    return target


#: What a ``@cache`` workload's "cache on" server adds to ``model.yaml``: the output cache and
#: merged duplicates in flight (the "cache off" server has neither, the default).
CACHE_OVERRIDES: dict[str, Any] = {"cache": {"enabled": True, "merge_in_flight": True}}


# -- request bodies, built once --------------------------------------------------------------------


@dataclass(frozen=True)
class RequestSet:
    """What the load generator posts for a workload: one route and content type, a body per image."""

    path: str
    content_type: str
    bodies: tuple[bytes, ...]

    @property
    def mean_bytes(self) -> float:
        return sum(map(len, self.bodies)) / len(self.bodies)


@cache
def v2_tensor_bodies(model: str, images: str) -> tuple[bytes, ...]:
    """V2 JSON inference bodies: each image of ``images`` pre-processed as ``model``'s
    ``model.yaml`` says (the server's own transform), as one ``pixel_values`` FP32 tensor.

    Fits handlers that take the pre-processed array as it is (``accepts_tensors``: the
    classifiers); HF handlers resolve their pre-processing from their folder, not from here.
    """
    from inference_engine.models.base import PreprocessingConfig
    from inference_engine.models.transforms import to_chw_array

    config = PreprocessingConfig(**model_specs()[model].config.get("preprocessing", {}))
    bodies = []
    for data in image_set(images):
        with Image.open(io.BytesIO(data)) as image:
            array = to_chw_array(image.convert("RGB"), config)
        tensor = {
            "name": "pixel_values",
            "datatype": "FP32",
            "shape": [1, *array.shape],
            "data": array.reshape(-1).tolist(),
        }
        bodies.append(json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode())
    return tuple(bodies)


def request_set(model: str, images: str, protocol: ApiProtocol) -> RequestSet:
    """The requests of a workload: ``images`` as JPEG uploads (native) or as V2 JSON tensors."""
    if protocol == "v2":
        return RequestSet(f"/v2/models/{model}/infer", "application/json", v2_tensor_bodies(model, images))
    return RequestSet(model_specs()[model].path, "image/jpeg", image_set(images))
