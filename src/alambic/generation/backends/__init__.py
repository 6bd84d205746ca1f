"""Model backends: what runs the forward passes of a batch whose sequences come and go."""

from alambic.generation.backends.base import DraftingBackend, ModelBackend
from alambic.generation.backends.hf import TransformersBackend
from alambic.generation.backends.select import BACKENDS, load_backend

__all__ = ["BACKENDS", "DraftingBackend", "ModelBackend", "TransformersBackend", "load_backend"]
