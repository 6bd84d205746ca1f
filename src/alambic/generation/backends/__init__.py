"""Model backends: what runs the forward passes of a batch whose sequences come and go."""

from alambic.generation.backends.base import ModelBackend
from alambic.generation.backends.hf import TransformersBackend

__all__ = ["ModelBackend", "TransformersBackend"]
