"""alambic: serve, distill, detect and prove knowledge distillation between language models."""

__version__ = "0.1.0"
