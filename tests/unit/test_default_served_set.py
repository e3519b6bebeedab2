"""The default served set leaves out models whose weights are absent; naming one loads it anyway."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_engine.metrics import Metrics
from inference_engine.server import build_app
from inference_engine.settings import Settings
from tests.helpers import in_process_client
from tests.repository import add_colour_model, add_model

NEEDS_WEIGHTS = """
from pathlib import Path
from inference_engine.models import ModelHandler

class NeedsWeights(ModelHandler):
    @classmethod
    def weights_missing(cls, config, model_dir):
        if (model_dir / "weights.bin").exists():
            return None
        return f"{model_dir / 'weights.bin'} is missing; run: fetch-weights --to {model_dir}"

    def load(self, device):
        reason = self.weights_missing(self.config, self.model_dir)
        if reason:
            raise RuntimeError(reason)

    def preprocess(self, image): return 0
    def predict(self, items): return list(items)
    def postprocess(self, output, *, top_k): return {"predictions": []}
"""


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    add_colour_model(tmp_path, "colour")
    folder = add_model(tmp_path, "needs_weights", {"handler": "model.py"})
    (folder / "model.py").write_text(NEEDS_WEIGHTS)
    return tmp_path


async def test_absent_weights_leave_a_model_out_of_the_default_set(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = build_app(Settings(model_repository=repository), Metrics())
    async with in_process_client(app) as client:
        assert [m["name"] for m in (await client.get("/v1/models")).json()["models"]] == ["colour"]
        assert (await client.get("/ready")).status_code == 200
    assert any("fetch-weights" in str(getattr(r, "reason", "")) for r in caplog.records)


async def test_a_model_named_explicitly_fails_with_the_reason(repository: Path) -> None:
    app = build_app(Settings(model_repository=repository, models=["colour", "needs_weights"]), Metrics())
    async with in_process_client(app) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert "run: fetch-weights" in ready.json()["models"]["needs_weights"]
        still_serving = await client.post("/v1/models/colour/predict", content=b"x")
        assert still_serving.status_code == 415


async def test_present_weights_are_served(repository: Path) -> None:
    (repository / "needs_weights" / "weights.bin").write_bytes(b"w")
    app = build_app(Settings(model_repository=repository), Metrics())
    async with in_process_client(app) as client:
        assert (await client.get("/ready")).status_code == 200
