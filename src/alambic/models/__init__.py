"""Models: the real teacher (SmolLM2 GGUF), any local HF directory, and tiny random models for tests."""

from alambic.models.loading import LoadedModel, load_model, smollm2_directory
from alambic.models.tiny import tiny_model

__all__ = ["LoadedModel", "load_model", "smollm2_directory", "tiny_model"]
