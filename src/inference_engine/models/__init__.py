"""The model contract and the model repository."""

from inference_engine.models.base import ModelConfig, ModelHandler, PreprocessingConfig

__all__ = ["ModelConfig", "ModelHandler", "PreprocessingConfig"]
