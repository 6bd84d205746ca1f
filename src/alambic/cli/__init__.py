"""The `alambic` command: a thin layer over the Python API. Bad input: one line on stderr, exit code 2."""

from alambic.cli import distill, gateway, harvest, logs, monitor, watermark
from alambic.cli.common import app

__all__ = ["app", "distill", "gateway", "harvest", "logs", "monitor", "watermark"]
