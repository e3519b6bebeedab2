"""CLIP (handler ``clip``): image and text embeddings and zero-shot classification.

A Hugging Face-format ``CLIPModel`` folder (``config.json``, weights, tokenizer files, and
optionally ``preprocessor_config.json``), found as :mod:`inference_engine.models.weights`
describes. ``model.yaml``'s ``labels`` are the default zero-shot labels: their embeddings (each
the normalised mean over ``options.templates``) are computed once at load, and every image
batch is scored against them on the model thread, so ``/predict`` without labels costs one
matrix product more than an embedding. Labels a request brings go through :meth:`rank_labels`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from inference_engine.models.base import ModelConfig
from inference_engine.models.dual_encoder import DualEncoderHandler, Towers
from inference_engine.models.hf import (
    config_int,
    load_pretrained,
    max_tokens,
    normalise,
    pooled,
    require_files,
)
from inference_engine.models.labels import resolve_labels

if TYPE_CHECKING:
    from transformers import CLIPModel

TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
USED_WEIGHTS = ("vision_model.", "visual_projection.", "text_model.", "text_projection.", "logit_scale")


class ClipImageTower(torch.nn.Module):
    """``pixel_values [N, 3, H, W]`` -> L2-normalised projected image features ``[N, projection_dim]``."""

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return normalise(pooled(self.model.get_image_features(pixel_values=pixel_values)))


class ClipTextTower(torch.nn.Module):
    """``input_ids, attention_mask [P, T]`` -> L2-normalised projected text features ``[P, D]``."""

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return normalise(pooled(output))


class ClipHandler(DualEncoderHandler):
    """CLIP from a Hugging Face folder; ``classify`` answers when ``labels`` are configured."""

    def __init__(self, config: ModelConfig, model_dir: Path) -> None:
        super().__init__(config, model_dir)
        self.label_embeddings: torch.Tensor | None = None  # [labels, D] on the device

    def build_towers(self, folder: Path) -> Towers:
        from transformers import CLIPModel, CLIPTokenizer

        require_files(folder, TOKENIZER_FILES, "CLIP tokenizer")
        model = load_pretrained(CLIPModel, folder, USED_WEIGHTS)
        tokenizer = CLIPTokenizer.from_pretrained(str(folder))
        return Towers(
            image=ClipImageTower(model),
            text=ClipTextTower(model),
            tokenizer=tokenizer,
            dimension=config_int(model.config, "projection_dim", folder),
            logit_scale=float(model.logit_scale.detach().exp()),
            max_tokens=max_tokens(tokenizer, model.config.text_config, folder),
            image_size=config_int(model.config.vision_config, "image_size", folder),
        )

    def finish_load(self, folder: Path) -> None:
        """Embed the default labels once, through this handler's own text path."""
        self._labels = resolve_labels(self.config.labels, self.model_dir)
        self.label_embeddings = None
        if self._labels:
            _, placement = self._loaded()
            embeddings = torch.from_numpy(self.embed_labels(self._labels))
            self.label_embeddings = embeddings.to(placement.device)

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        if self.label_embeddings is None:
            return None
        towers, _ = self._loaded()
        return torch.softmax(towers.logit_scale * embeddings @ self.label_embeddings.T, dim=-1)

    def unload(self) -> None:
        self.label_embeddings = None
        super().unload()
