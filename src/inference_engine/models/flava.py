"""FLAVA with a linear head (handler ``flava_classifier``): fit a head offline, serve it.

The model folder holds a Hugging Face-format ``FlavaModel`` (found as
:mod:`inference_engine.models.weights` describes) and a classification head: ``head.safetensors``
(``weight [classes, dim]``, ``bias [classes]``) with ``labels.txt`` beside it, both written by
:func:`save_head`. ``/predict`` answers the head's softmax; labels a request brings are ranked
zero-shot through FLAVA's text tower; ``/embed`` answers the image or text embeddings.

Which features: the image encoder's CLS token after FLAVA's ``image_projection``, L2-normalised.
That is the vector FLAVA's global contrastive loss trains against the text tower's projected
CLS, so one image forward serves the head, zero-shot labels and image embeddings alike, and a
head fitted on ``/embed`` output fits what ``/predict`` computes. The image encoder's own pooler
(``pooler_output``, dense + tanh) is trained by no FLAVA objective, so it is not used.

The towers are taken from ``FlavaModel.from_pretrained(folder)``: ``FlavaImageModel.from_pretrained``
on a FlavaModel folder silently loads no weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from inference_engine.errors import ModelLoadError
from inference_engine.models.base import Embedding, ModelConfig
from inference_engine.models.dual_encoder import DualEncoderHandler, Towers
from inference_engine.models.hf import (
    config_int,
    load_pretrained,
    max_tokens,
    normalise,
    require_files,
)
from inference_engine.models.labels import resolve_labels

if TYPE_CHECKING:
    from transformers import FlavaModel

DEFAULT_HEAD = "head.safetensors"
LABELS_FILE = "labels.txt"
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.txt",))
USED_WEIGHTS = ("image_model.", "image_projection.", "text_model.", "text_projection.", "logit_scale")


class FlavaImageTower(torch.nn.Module):
    """``pixel_values`` -> normalised ``image_projection`` of the image encoder's CLS token."""

    def __init__(self, model: FlavaModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model.image_model(pixel_values=pixel_values).last_hidden_state
        return normalise(self.model.image_projection(hidden[:, 0, :]))


class FlavaTextTower(torch.nn.Module):
    """``input_ids, attention_mask`` -> normalised ``text_projection`` of the text encoder's CLS token."""

    def __init__(self, model: FlavaModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return normalise(self.model.text_projection(hidden[:, 0, :]))


def save_head(path: Path | str, weight: npt.ArrayLike, bias: npt.ArrayLike, labels: Sequence[str]) -> Path:
    """Write a head the ``flava_classifier`` handler serves: ``path`` and ``labels.txt`` beside it.

    ``weight`` is ``[classes, dim]`` and ``bias`` ``[classes]``, fitted on the handler's image
    embeddings (``POST /v1/models/{name}/embed``, or ``handler.embed(output)``), e.g. with
    :func:`fit_head`. ``labels`` name the classes in row order.
    """
    path = Path(path)
    w = torch.as_tensor(np.asarray(weight, dtype=np.float32))
    b = torch.as_tensor(np.asarray(bias, dtype=np.float32))
    if w.ndim != 2 or b.shape != (w.shape[0],):
        raise ValueError(
            f"weight must be [classes, dim] and bias [classes]; got {tuple(w.shape)}, {tuple(b.shape)}"
        )
    if len(labels) != w.shape[0]:
        raise ValueError(f"{len(labels)} labels for {w.shape[0]} classes")
    if any(not label.strip() or "\n" in label or "\r" in label for label in labels):
        raise ValueError("labels must be non-empty single lines")
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"weight": w.contiguous(), "bias": b.contiguous()}, str(path))
    path.with_name(LABELS_FILE).write_text(
        "".join(f"{label.strip()}\n" for label in labels), encoding="utf-8"
    )
    return path


def fit_head(
    embeddings: npt.ArrayLike, targets: npt.ArrayLike, classes: int, *, l2: float = 1e-4, max_iter: int = 200
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Multinomial logistic regression on ``embeddings [N, dim]`` and class indices ``targets [N]``.

    A linear probe is how FLAVA's image features are evaluated; L-BFGS on the full batch is
    deterministic and converges in seconds for thousands of examples. Returns ``(weight, bias)``
    for :func:`save_head`.
    """
    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    y = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(
            f"embeddings must be [N, dim] and targets [N]; got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"targets must lie in 0..{classes - 1}")
    head = torch.nn.Linear(x.shape[1], classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    optimiser = torch.optim.LBFGS(head.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + l2 * head.weight.square().sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimiser.step(closure)  # type: ignore[no-untyped-call]
    return head.weight.detach().numpy().copy(), head.bias.detach().numpy().copy()


def embed_images(model_dir: Path, images: Iterable[Image.Image], *, batch_size: int = 16) -> Embedding:
    """``[N, dim]`` embeddings of RGB ``images`` by the FLAVA of ``model_dir``, for :func:`fit_head`.

    Loads the folder as the server does (weights, pre-processing, device) but without a head,
    so it works before the first head exists.
    """
    from inference_engine.models.loader import read_config
    from inference_engine.settings import BatchingSettings

    config = read_config(model_dir, BatchingSettings())
    handler = FlavaClassifier(
        config.model_copy(update={"options": {**config.options, "head": None}}), model_dir
    )
    handler.load(config.device)
    vectors: list[Embedding] = []
    try:
        items = [handler.preprocess(image) for image in images]
        for start in range(0, len(items), batch_size):
            vectors += [output.embedding for output in handler.predict(items[start : start + batch_size])]
    finally:
        handler.unload()
    if not vectors:
        raise ValueError("no images to embed")
    return np.stack(vectors)


def read_head(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` from a head file, checked for shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise ModelLoadError(f"head {path} cannot be read: {exc}") from None
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or bias is None or weight.ndim != 2 or bias.shape != (weight.shape[0],):
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        raise ModelLoadError(
            f"head {path} must hold weight [classes, dim] and bias [classes]; holds {shapes}"
        )
    return weight.float(), bias.float()


class FlavaClassifier(DualEncoderHandler):
    """FLAVA image features, a fitted linear head, and zero-shot labels through the text tower.

    Options: ``head`` (default ``head.safetensors``, relative to the model folder; ``null``
    serves embeddings and zero-shot labels only, e.g. to collect the embeddings a head is
    fitted on), plus ``hub_id`` and ``templates`` as for every dual encoder. ``labels``
    defaults to the ``labels.txt`` beside the head.
    """

    # FlavaImageProcessor reads a bare int size as a square (CLIP's as the shorter side).
    INT_SIZE_IS_SQUARE = True

    def __init__(self, config: ModelConfig, model_dir: Path) -> None:
        super().__init__(config, model_dir)
        self.head: torch.nn.Linear | None = None

    @classmethod
    def weights_missing(cls, config: ModelConfig, model_dir: Path) -> str | None:
        option = config.options.get("head", DEFAULT_HEAD)
        if isinstance(option, str):
            head = Path(option) if Path(option).is_absolute() else model_dir / option
            if not head.is_file():
                return f"the classification head {head} is missing (fit one: see {model_dir / 'README.md'})"
        return super().weights_missing(config, model_dir)

    def build_towers(self, folder: Path) -> Towers:
        from transformers import BertTokenizer, FlavaModel

        require_files(folder, TOKENIZER_FILES, "BERT tokenizer")
        model = load_pretrained(FlavaModel, folder, USED_WEIGHTS)
        tokenizer = BertTokenizer.from_pretrained(str(folder))
        return Towers(
            image=FlavaImageTower(model),
            text=FlavaTextTower(model),
            tokenizer=tokenizer,
            dimension=config_int(model.config, "projection_dim", folder),
            logit_scale=float(model.logit_scale.detach().exp()),
            max_tokens=max_tokens(tokenizer, model.config.text_config, folder),
            image_size=config_int(model.config.image_config, "image_size", folder),
        )

    def finish_load(self, folder: Path) -> None:
        """Load the head and its labels; check they fit this model's features."""
        self.head, self._labels = None, []
        option = self.config.options.get("head", DEFAULT_HEAD)
        if option is None:
            return
        path = Path(str(option))
        path = path if path.is_absolute() else self.model_dir / path
        if not path.is_file():
            raise ModelLoadError(
                f"classification head {path} does not exist; fit one with "
                "inference_engine.models.flava.save_head (see docs/model-repository.md), or set "
                "options.head: null to serve embeddings and zero-shot labels only"
            )
        weight, bias = read_head(path)
        towers, placement = self._loaded()
        classes, dimension = weight.shape
        if dimension != towers.dimension:
            raise ModelLoadError(
                f"head {path} takes {dimension}-dim features but this FLAVA gives {towers.dimension} "
                "(its projected image CLS); refit the head on this model's embeddings"
            )
        spec = self.config.labels if self.config.labels is not None else str(path.with_name(LABELS_FILE))
        labels = resolve_labels(spec, self.model_dir)
        if len(labels) != classes:
            raise ModelLoadError(f"head {path} has {classes} classes but {len(labels)} labels are configured")
        head = torch.nn.Linear(dimension, classes)
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
        self.head = head.eval().to(placement.device)
        self._labels = labels

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        return None if self.head is None else torch.softmax(self.head(embeddings), dim=-1)

    def unload(self) -> None:
        self.head = None
        super().unload()
