"""Tiny, seeded CLIP and FLAVA model folders for tests, built offline in well under a second.

Each builder writes a model folder the server can serve as is: ``model.yaml`` (handler ``clip``
or ``flava_classifier``, ``weights: weights``) and ``weights/``, a Hugging Face folder made with
``save_pretrained``. The weights are random (assert shapes, norms and plumbing with them, never
meaning); the CLIP tokenizer is the real one, built from the BPE merges in
``tests/fixtures/clip`` (see the README there).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
import yaml

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BPE_MERGES = FIXTURES / "clip" / "bpe_merges.txt.gz"
IMAGE_SIDE = 32
PROJECTION_DIM = 16
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}

# A WordPiece vocabulary big enough for the prompts and labels the tests use.
BERT_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "a", "an", "the", "of", "photo",
    "picture", "cat", "dog", "car", "bird", "tree", "cup", "coffee", "rocket", "person", "red",
    "green", "blue", "##s", "small", "large",
]  # fmt: skip


def _bytes_to_unicode() -> list[str]:
    """OpenAI's byte-to-unicode table, in its order: printable bytes first, the rest shifted past 255."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = list(printable)
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + shifted)
            shifted += 1
    return [chr(code) for code in codes]


@cache
def clip_vocabulary() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The 49,408-entry CLIP vocabulary and its merges, as OpenAI's ``SimpleTokenizer`` builds them."""
    lines = gzip.decompress(BPE_MERGES.read_bytes()).decode("utf-8").splitlines()
    merges = tuple((left, right) for left, right in (line.split() for line in lines))
    characters = _bytes_to_unicode()
    tokens = characters + [c + "</w>" for c in characters] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def clip_tokenizer() -> Any:
    """A real ``CLIPTokenizer`` (the fast one), built offline from the vendored merges."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocabulary()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)


def _write_model_yaml(folder: Path, handler: str, config: dict[str, Any]) -> None:
    document = {"name": folder.name, "handler": handler, "weights": "weights", **config}
    (folder / "model.yaml").write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


def preprocessor_config(folder: Path, size: dict[str, int], processor: str, side: int = IMAGE_SIDE) -> None:
    """A Hugging Face ``preprocessor_config.json`` with CLIP's normalisation and a ``side`` crop."""
    config = {
        "image_processor_type": processor,
        "size": size,
        "crop_size": {"height": side, "width": side},
        "do_center_crop": True,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "resample": 3,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def build_tiny_clip(folder: Path, **config: Any) -> Path:
    """A ~1.6M-parameter CLIP (32-pixel images, 16-dim embeddings) with the real tokenizer.

    ``config`` overrides ``model.yaml`` keys; by default three labels and two templates.
    """
    from transformers import CLIPConfig, CLIPModel

    weights = folder / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(
            CLIPConfig(
                text_config={**_SMALL, "vocab_size": 49408, "max_position_embeddings": 77},
                vision_config={**_SMALL, "image_size": IMAGE_SIDE, "patch_size": 8},
                projection_dim=PROJECTION_DIM,
            )
        ).eval()
    model.save_pretrained(str(weights))
    clip_tokenizer().save_pretrained(str(weights))
    preprocessor_config(weights, {"shortest_edge": IMAGE_SIDE}, "CLIPImageProcessor")
    defaults: dict[str, Any] = {
        "labels": ["cat", "dog", "car"],
        "top_k": 3,
        "max_batch_size": 4,
        "options": {"templates": ["a photo of a {}.", "a picture of a {}."]},
    }
    _write_model_yaml(folder, "clip", {**defaults, **config})
    return folder


def bert_tokenizer(vocab: Sequence[str] = BERT_VOCAB) -> Any:
    """A WordPiece (BERT) tokenizer over ``vocab``, as FLAVA uses (``bert-base-uncased`` for real)."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, model_max_length=64)


def build_tiny_flava(folder: Path, labels: Sequence[str], **config: Any) -> Path:
    """A ~70k-parameter FLAVA (32-pixel images, 16-dim embeddings), a BERT tokenizer and a random head.

    The head (``head.safetensors`` + ``labels.txt``, via ``save_head``) has one row per label.
    """
    from transformers import FlavaConfig, FlavaModel

    from inference_engine.models.flava import save_head

    weights = folder / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FlavaModel(
            FlavaConfig(
                image_config={**_SMALL, "image_size": IMAGE_SIDE, "patch_size": 8},
                text_config={**_SMALL, "vocab_size": len(BERT_VOCAB), "max_position_embeddings": 64},
                multimodal_config=dict(_SMALL),
                projection_dim=PROJECTION_DIM,
                hidden_size=32,
            )
        ).eval()
        head_weight = torch.randn(len(labels), PROJECTION_DIM) * 4
        head_bias = torch.zeros(len(labels))
    model.save_pretrained(str(weights))
    bert_tokenizer().save_pretrained(str(weights))
    preprocessor_config(weights, {"height": IMAGE_SIDE, "width": IMAGE_SIDE}, "FlavaImageProcessor")
    save_head(folder / "head.safetensors", head_weight.numpy(), head_bias.numpy(), labels)
    defaults: dict[str, Any] = {"top_k": 3, "max_batch_size": 4}
    _write_model_yaml(folder, "flava_classifier", {**defaults, **config})
    return folder
