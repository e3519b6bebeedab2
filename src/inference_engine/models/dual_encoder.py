"""Image-text dual encoders (CLIP, FLAVA): the handler both share.

Both map images and texts into one embedding space. The handler keeps the two towers as small
``torch.nn.Module`` wrappers around the loaded model that return L2-normalised embeddings, so
the served path, the default-label embeddings and the ONNX export run the very same code.

Pre-processing stays the engine's own (:func:`~inference_engine.models.transforms.to_chw_array`,
fast and thread-safe) rather than the Hugging Face image processor; its values come from the
folder's ``preprocessor_config.json`` (or the image processor nested in ``processor_config.json``,
as transformers 5 saves a processor) unless ``model.yaml`` sets ``preprocessing`` itself.

``transformers`` is imported only inside ``load`` (by the subclasses), so a server that serves
no such model starts without paying for it.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from pydantic import ValidationError

from inference_engine.errors import InvalidInput, ModelLoadError, UnsupportedTask
from inference_engine.models.base import (
    Capabilities,
    Embedding,
    ModelConfig,
    ModelHandler,
    PreprocessingConfig,
)
from inference_engine.models.capabilities import ImageEmbedder, TensorInput, ZeroShot
from inference_engine.models.device import Placement, plan_placement, set_intra_op_threads
from inference_engine.models.hf import (
    CLIP_MEAN,
    CLIP_STD,
    image_processor_file,
    normalise,
    processor_preprocessing,
)
from inference_engine.models.transforms import to_chw_array
from inference_engine.models.weights import resolve_weights, weights_absent
from inference_engine.numerics import softmax, top_k_predictions

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Array = npt.NDArray[np.float32]

DEFAULT_TEMPLATES = ("a photo of a {}.",)
# Prompts per text forward when embedding a model's default labels at load (bounds memory).
LABEL_PROMPTS_PER_FORWARD = 256


@dataclass(frozen=True)
class TextItem:
    """One text input: several prompts, tokenised and padded to the longest of them."""

    input_ids: npt.NDArray[np.int64]  # [prompts, tokens]
    attention_mask: npt.NDArray[np.int64]  # [prompts, tokens]


@dataclass(frozen=True)
class ImageOutput:
    """One image's answer from ``predict``: its embedding and, with labels, probabilities over them."""

    embedding: Embedding
    probabilities: Array | None


@dataclass(frozen=True)
class Towers:
    """What a subclass builds from a folder (on the CPU, float32)."""

    image: torch.nn.Module  # pixel_values [N, 3, H, W] -> normalised embeddings [N, D]
    text: torch.nn.Module  # (input_ids, attention_mask) [P, T] -> normalised embeddings [P, D]
    tokenizer: PreTrainedTokenizerBase
    dimension: int
    logit_scale: float
    max_tokens: int
    image_size: int  # the side the image tower was built for


class DualEncoderHandler(ImageEmbedder, ZeroShot, TensorInput, ModelHandler[Array, ImageOutput]):
    """A model with an image tower and a text tower in one embedding space.

    Options: ``hub_id`` (see :mod:`inference_engine.models.weights`) and ``templates`` (prompt
    templates with ``{}``, averaged per label for zero-shot; default ``["a photo of a {}."]``).
    """

    #: The pre-processing used when neither ``model.yaml`` nor the folder says.
    DEFAULT_PREPROCESSING: ClassVar[dict[str, Any]] = {
        "resize": 224, "crop": 224, "interpolation": "bicubic", "mean": CLIP_MEAN, "std": CLIP_STD,
    }  # fmt: skip
    #: How a bare int ``size`` in ``preprocessor_config.json`` is meant by this model's processor.
    INT_SIZE_IS_SQUARE: ClassVar[bool] = False

    def __init__(self, config: ModelConfig, model_dir: Path) -> None:
        super().__init__(config, model_dir)
        self.placement: Placement | None = None
        self.towers: Towers | None = None
        self.templates: tuple[str, ...] = DEFAULT_TEMPLATES
        self._labels: list[str] = []
        # HF fast tokenizers re-apply their padding/truncation settings on every call, which
        # mutates shared Rust state ("Already borrowed" under concurrency): one call at a time.
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def weights_missing(cls, config: ModelConfig, model_dir: Path) -> str | None:
        return weights_absent(config, model_dir)

    # -- what a subclass provides -------------------------------------------------------------

    @abstractmethod
    def build_towers(self, folder: Path) -> Towers:
        """Load the model and tokenizer from ``folder`` and wrap the two towers."""

    def finish_load(self, folder: Path) -> None:
        """After the towers are on the device: labels, heads, default label embeddings."""

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        """Probabilities over :meth:`labels` for a batch of image embeddings, or ``None``."""
        return None

    # -- loading ------------------------------------------------------------------------------

    def load(self, device: str) -> None:
        self.placement = plan_placement(device, self.config.dtype)
        set_intra_op_threads(self.config.intra_op_threads)
        self.templates = self._read_templates()
        folder = resolve_weights(self.config, self.model_dir)
        self.config = self.config.model_copy(update={"preprocessing": self._preprocessing(folder)})
        from transformers.utils import logging as hf_logging

        # Loading progress bars on stderr would garble the JSON log (untyped in transformers).
        cast("Callable[[], None]", hf_logging.disable_progress_bar)()
        towers = self.build_towers(folder)
        crop = self.config.preprocessing.crop
        if crop != towers.image_size:
            raise ModelLoadError(
                f"model {self.config.name!r}: preprocessing.crop ({crop}) must equal the image size the "
                f"model was built for ({towers.image_size}); fix preprocessing in model.yaml or "
                f"{image_processor_file(folder) or folder / 'preprocessor_config.json'}"
            )
        self.placement.module(towers.image)
        self.placement.module(towers.text)
        self.towers = towers
        self.finish_load(folder)

    def _read_templates(self) -> tuple[str, ...]:
        templates = self.config.options.get("templates", list(DEFAULT_TEMPLATES))
        if (
            not isinstance(templates, list)
            or not templates
            or not all(isinstance(t, str) and "{}" in t for t in templates)
        ):
            raise ModelLoadError(
                f"model {self.config.name!r}: options.templates must be a non-empty list of strings "
                f"each holding '{{}}' where the label goes (got {templates!r})"
            )
        return tuple(templates)

    def _preprocessing(self, folder: Path) -> PreprocessingConfig:
        """``model.yaml``'s section when it has one, else the folder's processor, else the default.

        The processor's settings are in ``preprocessor_config.json`` or, as transformers 5 saves
        a processor, nested in ``processor_config.json`` (see ``hf.image_processor_file``).
        """
        if "preprocessing" in self.config.model_fields_set:
            return self.config.preprocessing
        path = image_processor_file(folder)
        if path is None:
            return PreprocessingConfig(**self.DEFAULT_PREPROCESSING)
        fields = processor_preprocessing(path, int_size_is_square=self.INT_SIZE_IS_SQUARE)
        try:
            return PreprocessingConfig(**fields)
        except ValidationError as exc:
            raise ModelLoadError(f"{path}: unusable pre-processing ({exc.errors()[0]['msg']})") from None

    def _loaded(self) -> tuple[Towers, Placement]:
        if self.towers is None or self.placement is None:
            raise RuntimeError("the model is not loaded")
        return self.towers, self.placement

    # -- images -------------------------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> Array:
        return to_chw_array(image, self.config.preprocessing)

    def predict(self, items: Sequence[Array]) -> list[ImageOutput]:
        towers, placement = self._loaded()
        batch = placement.to_device(items)
        with torch.inference_mode():
            embeddings = towers.image(batch)
            probabilities = self.classify(embeddings)
            vectors = embeddings.cpu().numpy()
            scores = None if probabilities is None else probabilities.float().cpu().numpy()
        return [ImageOutput(vectors[i], None if scores is None else scores[i]) for i in range(len(vectors))]

    def postprocess(self, output: ImageOutput, *, top_k: int) -> dict[str, Any]:
        return {"predictions": top_k_predictions(self.scores(output), self._labels, top_k)}

    def scores(self, output: ImageOutput) -> Embedding:
        # The service asks only while capabilities() offers classify, that is, with labels.
        if output.probabilities is None:
            name = self.config.name
            raise UnsupportedTask(f"model {name} does not answer class probabilities without labels")
        return output.probabilities

    def embed(self, output: ImageOutput) -> Embedding:
        return output.embedding

    # -- texts --------------------------------------------------------------------------------

    def preprocess_text(self, prompts: Sequence[str]) -> TextItem:
        towers, _ = self._loaded()
        if not prompts:
            raise InvalidInput("a text item needs at least one prompt")
        with self._tokenizer_lock:
            encoded = towers.tokenizer(
                list(prompts),
                padding="longest",
                truncation=True,
                max_length=towers.max_tokens,
                return_tensors="np",
            )
        return TextItem(
            np.asarray(encoded["input_ids"], dtype=np.int64),
            np.asarray(encoded["attention_mask"], dtype=np.int64),
        )

    def predict_text(self, items: Sequence[TextItem]) -> list[Embedding]:
        """All prompts of the batch in one forward; each item's prompts averaged, re-normalised."""
        towers, placement = self._loaded()
        counts = [item.input_ids.shape[0] for item in items]
        width = max(item.input_ids.shape[1] for item in items)
        pad = towers.tokenizer.pad_token_id
        ids = np.full((sum(counts), width), pad if isinstance(pad, int) else 0, dtype=np.int64)
        mask = np.zeros((sum(counts), width), dtype=np.int64)
        row = 0
        for item in items:
            rows, tokens = item.input_ids.shape
            ids[row : row + rows, :tokens] = item.input_ids
            mask[row : row + rows, :tokens] = item.attention_mask
            row += rows
        with torch.inference_mode():
            embeddings = towers.text(
                torch.from_numpy(ids).to(placement.device), torch.from_numpy(mask).to(placement.device)
            )
            means = torch.stack([group.mean(dim=0) for group in torch.split(embeddings, counts)])
            vectors = normalise(means).cpu().numpy()
        return list(vectors)

    def embed_labels(self, labels: Sequence[str]) -> Array:
        """``[len(labels), D]`` label embeddings over the templates (model thread; used at load)."""
        items = [self.preprocess_text(self.label_prompts(label)) for label in labels]
        vectors: list[Embedding] = []
        chunk: list[TextItem] = []
        for item in items:
            chunk.append(item)
            if sum(i.input_ids.shape[0] for i in chunk) >= LABEL_PROMPTS_PER_FORWARD:
                vectors += self.predict_text(chunk)
                chunk = []
        if chunk:
            vectors += self.predict_text(chunk)
        return np.stack(vectors)

    def label_prompts(self, label: str) -> list[str]:
        return [template.replace("{}", label) for template in self.templates]

    def rank_labels(
        self, output: ImageOutput, label_embeddings: Embedding, labels: Sequence[str], *, top_k: int
    ) -> dict[str, Any]:
        """Softmax over ``logit_scale * cosine`` (both sides unit-norm), as CLIP was trained."""
        towers, _ = self._loaded()
        if label_embeddings.shape != (len(labels), output.embedding.shape[0]):
            raise ValueError(
                f"label embeddings {label_embeddings.shape} do not fit {len(labels)} labels "
                f"of dimension {output.embedding.shape[0]}"
            )
        logits = towers.logit_scale * (label_embeddings.astype(np.float32) @ output.embedding)
        return {"predictions": top_k_predictions(softmax(logits.astype(np.float32)), labels, top_k)}

    # -- the rest of the contract ---------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        """Classification needs labels (``model.yaml``'s, or a fitted head's)."""
        offered = super().capabilities()
        return offered if self._labels else offered.without("classify")

    def labels(self) -> list[str]:
        return self._labels

    def embedding_dimension(self) -> int | None:
        return None if self.towers is None else self.towers.dimension

    def warmup(self) -> None:
        """Both towers, at batch 1 and at the largest batch, so neither first request is slow."""
        side = self.config.preprocessing.resize
        image = self.preprocess(Image.new("RGB", (side, side), (127, 127, 127)))
        text = self.preprocess_text(self.label_prompts("cat"))
        for size in sorted({1, self.config.max_batch_size}):
            self.predict([image] * size)
            self.predict_text([text] * size)

    def onnx_export(self) -> tuple[torch.nn.Module, Literal["embedding"]]:
        """The image tower (pixels -> normalised embedding) for ``inference-engine export``."""
        towers, _ = self._loaded()
        return towers.image, "embedding"

    def unload(self) -> None:
        self.towers = None
        if self.placement is not None and self.placement.is_cuda:
            torch.cuda.empty_cache()
