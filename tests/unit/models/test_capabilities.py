"""What a handler answers follows from the capability classes it inherits, and nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from inference_engine.errors import InvalidInput, ModelLoadError, UnsupportedTask
from inference_engine.models import ModelConfig, ModelHandler
from inference_engine.models.capabilities import (
    Capabilities,
    ImageEmbedder,
    TensorInput,
    TextEncoder,
    ZeroShot,
)
from inference_engine.models.loader import check_contract

CONFIG = ModelConfig(name="m", handler="x", preprocessing={"resize": 8, "crop": 4})


class Plain(ModelHandler[Any, Any]):
    def load(self, device: str) -> None: ...
    def preprocess(self, image: Image.Image) -> Any:
        return image

    def predict(self, items: Sequence[Any]) -> list[Any]:
        return list(items)

    def postprocess(self, output: Any, *, top_k: int) -> dict[str, Any]: return {}  # fmt: skip


class Everything(ImageEmbedder, ZeroShot, TensorInput, Plain):
    def embed(self, output: Any) -> Any:
        return output

    def embedding_dimension(self) -> int:
        return 3

    def preprocess_text(self, prompts: Sequence[str]) -> Any:
        return list(prompts)

    def predict_text(self, items: Sequence[Any]) -> list[Any]:
        return list(items)

    def rank_labels(
        self, output: Any, label_embeddings: Any, labels: Sequence[str], *, top_k: int
    ) -> dict[str, Any]:
        return {}  # fmt: skip


def test_a_plain_handler_only_classifies() -> None:
    offered = Plain(CONFIG, Path(".")).capabilities()
    assert offered.tasks == {"classify"}
    assert offered.tensor_input is None and offered.embedding_dimension is None
    with pytest.raises(UnsupportedTask, match=r"does not answer image embeddings \(it answers: classify\)"):
        offered.require("embed_image", "m")
    with pytest.raises(UnsupportedTask, match="pre-processed tensors"):
        offered.requiring_tensor_input("m")


def test_inherited_capabilities_are_the_task_list() -> None:
    handler = Everything(CONFIG, Path("."))
    offered = handler.capabilities()
    assert offered.tasks == {"classify", "embed_image", "embed_text", "zero_shot"}
    assert offered.embedding_dimension == 3
    assert offered.requiring_zero_shot("m") is handler
    assert offered.requiring_text_encoder("m") is handler


def test_withholding_a_capability() -> None:
    offered = Capabilities.of(Everything(CONFIG, Path(".")))
    assert offered.without("classify").tasks == {"embed_image", "embed_text", "zero_shot"}
    # Ranking labels needs the text tower: withholding it withholds zero-shot too.
    assert offered.without("embed_text").tasks == {"classify", "embed_image"}
    assert offered.without("zero_shot", "embed_image").tasks == {"classify", "embed_text"}
    with pytest.raises(UnsupportedTask, match="classification without labels"):
        offered.without("classify").require("classify", "m")


def test_tensor_rows_are_checked_against_the_input_size() -> None:
    handler = Everything(CONFIG, Path("."))
    row = np.zeros((3, 4, 4), np.float32)
    assert handler.tensor_item(row).flags["C_CONTIGUOUS"]
    with pytest.raises(InvalidInput, match=r"shape \[3, 4, 4\]"):
        handler.tensor_item(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InvalidInput, match="NaN"):
        handler.tensor_item(np.full((3, 4, 4), np.nan, np.float32))
    nhwc = Everything(
        CONFIG.model_copy(
            update={"preprocessing": CONFIG.preprocessing.model_copy(update={"layout": "nhwc"})}
        ),
        Path("."),
    )
    assert nhwc.tensor_shape() == (4, 4, 3)


def test_a_capability_with_a_hook_missing_fails_the_contract_check() -> None:
    class HalfText(TextEncoder, Plain):
        def preprocess_text(self, prompts: Sequence[str]) -> Any: return prompts  # fmt: skip

    with pytest.raises(ModelLoadError, match="does not implement embedding_dimension, predict_text"):
        check_contract(Path("folder"), HalfText)


def test_the_old_tasks_declaration_is_refused_with_a_pointer() -> None:
    class OldStyle(Plain):
        def tasks(self) -> frozenset[str]: return frozenset({"classify"})  # fmt: skip

    with pytest.raises(ModelLoadError, match="defines tasks\\(\\); what a model answers now follows"):
        check_contract(Path("folder"), OldStyle)
